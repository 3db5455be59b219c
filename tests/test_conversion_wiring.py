"""The conversion as the stack runs it: the ONNX backend's preparation step, a Job named by the key on
Kubernetes and a one-shot Compose service on the VM, the token as a file, the model volume writable by
the preparation only."""

from __future__ import annotations

import copy
from typing import Any

import pulumi_kubernetes as k8s
import pytest
import yaml

from infra.azure.vm import decode_custom_data
from infra.backends import registry
from infra.backends.conversion_plan import conversion_spec
from infra.backends.description import Paths
from infra.config import ConversionConfig, OnnxBackendConfig
from infra.conventions import API_KEYS_FILE, HF_TOKEN_FILE
from infra.k8s.backend import SECRETS_MOUNT, BackendArgs, BackendPlatform, BackendWorkload, SecretSource
from offline import recording
from tests.conftest import run_stack, stack_value

JOB = "kubernetes:batch/v1:Job"


def _onnx(stack: str, **conversion: Any) -> dict[str, Any]:
    backends = copy.deepcopy(stack_value(stack, "backends"))
    backends["onnx"]["conversion"] = {**backends["onnx"].get("conversion", {}), **conversion}
    return backends


def _job(rec: recording.Recording) -> dict[str, Any]:
    return rec.one(JOB, "-onnx-prepare").plain


def _stack_conversion(stack: str) -> ConversionConfig:
    """The stack file's conversion settings (local and dev fetch the prebuilt int4 model)."""
    return ConversionConfig.model_validate(stack_value(stack, "backends")["onnx"].get("conversion", {}))


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_job_name_and_output_carry_the_conversion_key(stack: str) -> None:
    job = _job(run_stack(stack))
    key = conversion_spec(_stack_conversion(stack), "cpu-int4").key()
    assert job["metadata"]["name"] == f"convert-{key}"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--out") + 1] == f"/models/{key}"
    assert args[args.index("--model") + 1] == "microsoft/Phi-4-mini-instruct"


def test_unchanged_stack_keeps_the_job_and_a_changed_model_or_target_renames_it() -> None:
    name = _job(run_stack("prod"))["metadata"]["name"]
    assert _job(run_stack("prod"))["metadata"]["name"] == name
    other_model = _job(run_stack("prod", {"backends": _onnx("prod", model="microsoft/phi-4")}))
    other_target = _job(run_stack("prod", {"backends": _onnx("prod", target="cpu-fp32")}))
    other_revision = _job(run_stack("prod", {"backends": _onnx("prod", revision="0af4b0c")}))
    names = {name, *(j["metadata"]["name"] for j in (other_model, other_target, other_revision))}
    assert len(names) == 4


def test_token_is_a_mounted_file_never_an_env_value() -> None:
    rec = run_stack("prod")
    pod = _job(rec)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN_PATH"]["value"] == "/var/run/secrets/slm/hf-token"
    assert all("valueFrom" not in e for e in container["env"])
    token_mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    assert token_mount == {"name": "secrets", "mountPath": "/var/run/secrets/slm", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    # Only the token: the conversion never sees the API keys.
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "hf-token", "items": [{"key": "hf-token", "path": "hf-token"}]}}
    ]
    assert volume["projected"]["defaultMode"] == 0o400
    secret = rec.one("kubernetes:core/v1:Secret", "-hf-token")
    assert secret.plain["metadata"]["name"] == "hf-token"
    assert isinstance(secret.inputs["stringData"], recording.Secret)


def test_job_writes_the_shared_volume_and_runs_restricted() -> None:
    rec = run_stack("prod")
    pod = _job(rec)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models["mountPath"] == "/models" and not models.get("readOnly")
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    claim = rec.one("kubernetes:core/v1:PersistentVolumeClaim", "-onnx-models").plain["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"] == "azurefile-csi-premium"
    tolerated = {(t["key"], t["value"]) for t in pod["tolerations"]}
    assert ("sku", "gpu") in tolerated  # the big nodes of a GPU pool may run it


def test_local_uses_its_single_node_volume() -> None:
    claim = run_stack("local").one("kubernetes:core/v1:PersistentVolumeClaim", "-onnx-models").plain["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim


def test_backend_mounts_read_only_and_waits_for_a_complete_model() -> None:
    backend = registry.describe("onnx", OnnxBackendConfig(enabled=True), Paths(secrets=SECRETS_MOUNT))
    assert backend.preparation is not None
    key = backend.preparation.key

    def program() -> None:
        provider = k8s.Provider("p", kubeconfig="{}")
        BackendWorkload(
            "c",
            BackendArgs(
                platform=BackendPlatform(
                    provider=provider,
                    namespace="slm-serving",
                    labels={},
                    storage_size_gb=10,
                    secrets={
                        API_KEYS_FILE: SecretSource("backend-api-keys", API_KEYS_FILE),
                        HF_TOKEN_FILE: SecretSource("hf-token", HF_TOKEN_FILE),
                    },
                    image_refs={
                        ("converter", "cpu"): "registry.example/converter:1",
                        ("onnx-server", "cpu"): "registry.example/onnx-server:1",
                    },
                ),
                backend=backend,
            ),
        )

    rec = recording.run("t", {}, [], program=program)
    assert rec.one("kubernetes:core/v1:PersistentVolumeClaim").plain["metadata"]["name"] == "models"
    assert key == conversion_spec(ConversionConfig(), "cpu-int4").key()
    assert rec.one(JOB).plain["metadata"]["name"] == f"convert-{key}"
    pod = rec.one("kubernetes:apps/v1:Deployment").plain["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    mount = {"name": "models", "mountPath": "/models", "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]
    (wait,) = pod["initContainers"]
    assert f"test -s /models/{key}/conversion.json" in wait["command"][-1]
    assert wait["volumeMounts"] == [mount]
    assert wait["securityContext"]["readOnlyRootFilesystem"] is True


def test_disabling_onnx_removes_the_conversion() -> None:
    backends = copy.deepcopy(stack_value("prod", "backends"))
    backends["onnx"] = {"enabled": False}
    rec = run_stack("prod", {"backends": backends})
    assert not [r for r in rec.of_type(JOB) if "onnx" in r.name]
    claims = [r.plain["metadata"]["name"] for r in rec.of_type("kubernetes:core/v1:PersistentVolumeClaim")]
    assert "models" not in claims and claims  # the other backends keep their own caches


def test_gpu_backend_cannot_use_a_cpu_conversion_target() -> None:
    from infra.config import ConfigError

    backends = _onnx("prod", target="cpu-int4")
    backends["onnx"]["device"] = "gpu"
    with pytest.raises(ConfigError, match=r"backends\.onnx\.conversion\.target: cpu-int4 does not run on device gpu"):
        run_stack("prod", {"backends": backends})


def test_vm_runs_the_conversion_once_before_the_server() -> None:
    vm = run_stack("dev").one("azure-native:compute:VirtualMachine").plain
    document = yaml.safe_load(decode_custom_data(vm["osProfile"]["customData"]))
    files = {f["path"]: f["content"] for f in document["write_files"]}
    compose = yaml.safe_load(files["/opt/slm-serving/compose.yaml"])
    service = compose["services"]["convert"]
    key = conversion_spec(_stack_conversion("dev"), "cpu-int4").key()
    # One shot, retried on failure; the server starts once it has finished.
    assert service["restart"] == "on-failure:2"
    assert compose["services"]["onnx"]["depends_on"] == {"convert": {"condition": "service_completed_successfully"}}
    assert service["command"][service["command"].index("--out") + 1] == f"/models/{key}"
    assert service["image"].startswith("slmdev.azurecr.io/slm-serving/converter:")
    assert service["environment"]["HF_TOKEN_PATH"] == "/run/secrets/hf-token"
    assert service["secrets"] == ["hf-token"]
    assert compose["secrets"]["hf-token"]["file"] == "/run/slm-serving/secrets/hf_token"
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    # The model volume: writable by the conversion only.
    assert service["volumes"] == ["/var/lib/slm-serving/models:/models"] and service["user"] == "10001:10001"
    assert compose["services"]["onnx"]["volumes"] == ["/var/lib/slm-serving/models:/models:ro"]
    assert "slmdev.azurecr.io" in files["/usr/local/sbin/slm-registry-login"]
