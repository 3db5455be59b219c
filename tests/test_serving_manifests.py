"""The serving layer's Kubernetes objects, from the offline render of every Kubernetes stack: schemas
(core kinds with kubernetes-validate, custom resources with their CRD schemas), checkov, and the
properties the platform promises (placement, probes, secrets as files, authenticated routes, default
deny, ownership)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from offline import recording
from offline.recording import PROJECT_ROOT
from tests.checkov_support import checkov_results, needs_checkov
from tests.conftest import run_stack, stack_value
from tests.test_kubernetes_manifests import KUBERNETES_VERSION

KUBERNETES_STACKS = ("prod", "local")
CRD_VALIDATOR = PROJECT_ROOT / "tests" / "crd_validation"
NODE = shutil.which("node")
needs_crd_validator = pytest.mark.skipif(
    NODE is None or not (CRD_VALIDATOR / "node_modules").exists(),
    reason="node and tests/crd_validation/node_modules are needed (scripts/test.py installs them with npm ci)",
)
ENVOY_GATEWAY_SCHEMAS = PROJECT_ROOT / "tests" / "data" / "envoy-gateway"
# API groups kubernetes-validate knows; everything else is a custom resource.
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}
CRD_GROUPS = {"gateway.networking.k8s.io/v1", "cert-manager.io/v1", "keda.sh/v1alpha1", "monitoring.coreos.com/v1"}


def manifests(rec: recording.Recording) -> list[dict[str, Any]]:
    return [recording.redact(r.inputs) for r in rec.resources if r.type.startswith("kubernetes:") and r.custom]


def kinds(rec: recording.Recording, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests(rec) if m["kind"] == kind]


def one(rec: recording.Recording, kind: str, name: str) -> dict[str, Any]:
    found = [m for m in kinds(rec, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def local_ollama() -> dict[str, Any]:
    """The local stack's backends with Ollama instead of ONNX (one CPU backend fits its laptop node)."""
    backends = stack_value("local", "backends")
    backends["ollama"]["enabled"], backends["onnx"]["enabled"] = True, False
    return backends


def with_web_ui(stack: str) -> recording.Recording:
    return run_stack(stack, overrides={"webUi": {"enabled": True}})


# --- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_core_objects_validate(stack: str, rendered: Any) -> None:
    core = [m for m in manifests(rendered(stack)) if m["apiVersion"] in CORE_GROUPS]
    assert {m["kind"] for m in core} >= {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Job"}
    for manifest in core:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_every_object_has_a_schema(rendered: Any) -> None:
    for stack in KUBERNETES_STACKS:
        for manifest in manifests(rendered(stack)):
            group = manifest["apiVersion"]
            assert group in CORE_GROUPS | CRD_GROUPS | {"gateway.envoyproxy.io/v1alpha1"}, (
                f"{manifest['kind']} {group} has no schema check"
            )


def _validate_custom(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(CRD_VALIDATOR / "validate.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)


@needs_crd_validator
@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_custom_resources_validate(stack: str, rendered: Any) -> None:
    objects = [m for m in manifests(rendered(stack)) if m["apiVersion"] in CRD_GROUPS]
    objects += [m for m in manifests(with_web_ui(stack)) if m["kind"] == "HTTPRoute"]
    assert {m["kind"] for m in objects} >= {
        "Gateway",
        "GatewayClass",
        "HTTPRoute",
        "Certificate",
        "Issuer",
        "PrometheusRule",
    }
    results = _validate_custom(objects)
    assert len(results) == len(objects)
    failures = [r for r in results if r["error"]]
    assert not failures, failures


@needs_crd_validator
def test_custom_resource_validation_is_live() -> None:
    bad = [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "x"},
            "spec": {"minReplicaCount": "1"},
        },
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "x"}, "spec": {}},
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": "x"},
            "spec": {"dnsNames": "a"},
        },
    ]
    assert all(r["error"] for r in _validate_custom(bad))


def _envoy_gateway_schema(kind: str) -> dict[str, Any]:
    return json.loads((ENVOY_GATEWAY_SCHEMAS / f"{kind}.json").read_text())


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_envoy_gateway_objects_validate(stack: str, rendered: Any) -> None:
    objects = [m for m in manifests(rendered(stack)) if m["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"]
    assert {m["kind"] for m in objects} == {
        "EnvoyProxy",
        "SecurityPolicy",
        "ClientTrafficPolicy",
        "BackendTrafficPolicy",
    }
    for manifest in objects:
        jsonschema.validate(manifest, _envoy_gateway_schema(manifest["kind"]))


def test_envoy_gateway_schemas_reject_unknown_fields(rendered: Any) -> None:
    policy = one(rendered("local"), "SecurityPolicy", "api-key-auth")
    broken = {
        **policy,
        "spec": {**policy["spec"], "apiKeyAuth": {**policy["spec"]["apiKeyAuth"], "extractFrom": [{"header": ["x"]}]}},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _envoy_gateway_schema("SecurityPolicy"))


def test_traffic_policy_schemas_reject_misspelt_fields(rendered: Any) -> None:
    client = one(rendered("local"), "ClientTrafficPolicy", "client-traffic")
    jsonschema.validate(client, _envoy_gateway_schema("ClientTrafficPolicy"))
    for spec in (
        {**client["spec"], "path": {"escapedSlashAction": "RejectRequest"}},
        {**client["spec"], "path": {"escapedSlashesAction": "Reject"}},
        {**client["spec"], "timeout": {"http": {"requestTimeout": "60s"}}},
        {**client["spec"], "headers": {"requestHeaders": {"remove": ["X-Real-IP"]}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**client, "spec": spec}, _envoy_gateway_schema("ClientTrafficPolicy"))
    backend = one(rendered("local"), "BackendTrafficPolicy", "backend-traffic")
    override = backend["spec"]["responseOverride"][0]
    for spec in (
        {**backend["spec"], "responseOverride": [{**override, "match": {"statusCode": [502]}}]},
        {**backend["spec"], "timeout": {"tcp": {"connectionTimeout": "10s"}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**backend, "spec": spec}, _envoy_gateway_schema("BackendTrafficPolicy"))


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_the_gateway_normalises_paths_and_bounds_what_clients_send(stack: str) -> None:
    """What the VM's Caddy does, through Envoy Gateway's ClientTrafficPolicy on the Gateway."""
    policy = one(with_web_ui(stack), "ClientTrafficPolicy", "client-traffic")["spec"]
    assert policy["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "slm-serving"}]
    # %2F and %5C are refused, not decoded into a path another route owns; slashes merged.
    assert policy["path"] == {"escapedSlashesAction": "RejectRequest", "disableMergeSlashes": False}
    removed = policy["headers"]["earlyRequestHeaders"]["remove"]
    assert {"X-Real-IP", "Forwarded", "X-Forwarded-For"} <= set(removed)
    assert policy["clientIPDetection"] == {"xForwardedFor": {"numTrustedHops": 0}}
    assert policy["timeout"]["http"]["requestReceivedTimeout"] == "60s"


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_backend_routes_answer_json_errors_and_bound_connects(stack: str) -> None:
    rec = with_web_ui(stack)
    policy = one(rec, "BackendTrafficPolicy", "backend-traffic")["spec"]
    assert {t["name"] for t in policy["targetRefs"]} == set(recording_backends(stack))
    assert policy["timeout"]["tcp"]["connectTimeout"] == "10s"
    codes: dict[int, str] = {}
    for override in policy["responseOverride"]:
        response = override["response"]
        assert response["contentType"] == "application/json" and response["body"]["type"] == "Inline"
        error = json.loads(response["body"]["inline"])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        codes |= {match["value"]: error["code"] for match in override["match"]["statusCodes"]}
    assert codes == {502: "backend_unavailable", 503: "backend_unavailable", 504: "backend_timeout"}


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_no_client_forwarding_header_or_api_key_reaches_a_backend_or_the_web_ui(stack: str) -> None:
    for route in kinds(with_web_ui(stack), "HTTPRoute"):
        if route["metadata"]["name"] == "https-redirect":
            continue
        for rule in route["spec"]["rules"]:
            [modifier] = [f["requestHeaderModifier"] for f in rule["filters"] if f["type"] == "RequestHeaderModifier"]
            assert {"X-Real-IP", "Forwarded"} <= set(modifier["remove"])
            assert ("Authorization" in modifier["remove"]) == (route["metadata"]["name"] == "open-webui")


@pytest.mark.parametrize("routing", ["path", "host"])
def test_ollamas_admin_api_matches_no_route(routing: str) -> None:
    """Clients get inference and listing; pull, create, copy, delete, push and blobs match no rule
    (Envoy answers 404)."""
    gateway = {"routing": routing, "domain": "llm.example.com", "acmeEmail": "ops@example.com"}
    rec = run_stack("local", {"gateway": gateway, "backends": local_ollama()})
    prefix = "/ollama" if routing == "path" else ""
    values = [m["path"]["value"] for rule in one(rec, "HTTPRoute", "ollama")["spec"]["rules"] for m in rule["matches"]]
    assert all(
        m["path"]["type"] == "PathPrefix"
        for r in one(rec, "HTTPRoute", "ollama")["spec"]["rules"]
        for m in r["matches"]
    )

    def routed(path: str) -> bool:  # Gateway API PathPrefix: whole path elements
        return any(path == v or path.startswith(v.rstrip("/") + "/") for v in values)

    for admin in ("pull", "create", "copy", "delete", "push", "blobs/sha256:0"):
        assert not routed(f"{prefix}/api/{admin}"), admin
    for allowed in ("/api/chat", "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/version", "/v1/models"):
        assert routed(f"{prefix}{allowed}"), allowed


# --- checkov ------------------------------------------------------------------------------------


@needs_checkov
@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_checkov_kubernetes_checks_pass(stack: str, tmp_path: Path) -> None:
    documents = manifests(with_web_ui(stack))
    path = tmp_path / f"{stack}.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    results = checkov_results(path, "kubernetes")
    failed = [(f["check_id"], f["resource"]) for f in results["failed_checks"]]
    assert not failed, failed
    # The checks ran on every object (local, one backend: ~270).
    assert len(results["passed_checks"]) > 250
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment") or "") > 20, (
            f"skip without a reason: {skipped['check_id']}"
        )


# --- placement, probes, budgets -------------------------------------------------------------------


GPU = "nvidia.com/gpu"


def test_gpu_backends_land_only_on_gpu_pools(rendered: Any) -> None:
    rec = rendered("prod")
    for name in ("vllm", "ollama"):  # device gpu in Pulumi.prod.yaml
        spec = pod_spec(one(rec, "Deployment", name))
        container = spec["containers"][0]
        assert container["resources"]["limits"][GPU] == "1"
        assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in spec["tolerations"]
        # Both prod pools carry accelerator=nvidia; only their nodes match.
        assert spec["nodeSelector"] == {"accelerator": "nvidia"}
        assert one(rec, "Deployment", name)["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_cpu_backends_never_request_gpus(rendered: Any) -> None:
    renders = {
        "prod": rendered("prod"),
        "local": rendered("local"),
        "local-ollama": run_stack("local", {"backends": local_ollama()}),
    }
    for stack, name in (("prod", "onnx"), ("local", "onnx"), ("local-ollama", "ollama")):
        spec = pod_spec(one(renders[stack], "Deployment", name))
        for container in spec["containers"] + spec.get("initContainers", []):
            assert GPU not in json.dumps(container.get("resources", {}))
        assert "tolerations" not in spec and "nodeSelector" not in spec


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_every_backend_has_probes_budget_and_a_restricted_pod(stack: str, rendered: Any) -> None:
    rec = rendered(stack)
    deployments = kinds(rec, "Deployment")
    assert deployments
    budgets = {m["metadata"]["name"] for m in kinds(rec, "PodDisruptionBudget")}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        assert name in budgets
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        main = spec["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["httpGet"]["port"] == "http", f"{name} {probe}"


def test_startup_budget_follows_config() -> None:
    backends = stack_value("local", "backends")
    backends["onnx"]["startupMinutes"] = 25
    rec = run_stack("local", overrides={"backends": backends})
    probe = pod_spec(one(rec, "Deployment", "onnx"))["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 25 * 60


def test_default_startup_budget_covers_large_model_downloads(rendered: Any) -> None:
    probe = pod_spec(one(rendered("prod"), "Deployment", "vllm"))["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 45 * 60


# --- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_secrets_reach_pods_as_files_never_env(stack: str) -> None:
    rec = with_web_ui(stack)
    secret_names = {m["metadata"]["name"] for m in kinds(rec, "Secret")}
    assert {"gateway-api-keys", "backend-api-keys"} <= secret_names
    for workload in kinds(rec, "Deployment") + kinds(rec, "Job"):
        spec = pod_spec(workload)
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                assert "valueFrom" not in env, f"{workload['metadata']['name']}: {env['name']} from a secret"
                assert not any(word in env["name"].upper() for word in ("KEY", "TOKEN", "PASSWORD")) or env[
                    "name"
                ].endswith("_PATH"), env
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] == 0o400
            for source in volume.get("projected", {}).get("sources", []):
                assert source["secret"]["name"] in secret_names


def test_secret_values_are_secret_in_state() -> None:
    rec = run_stack("local")
    for name in ("gateway-api-keys", "backend-api-keys"):
        reg = next(
            r for r in rec.resources if r.type == "kubernetes:core/v1:Secret" and r.inputs["metadata"]["name"] == name
        )
        assert recording.contains_secret(reg.inputs["stringData"])


def test_vllm_reads_its_keys_and_token_from_files(rendered: Any) -> None:
    container = pod_spec(one(rendered("prod"), "Deployment", "vllm"))["containers"][0]
    script = container["command"][-1]
    assert "/var/run/secrets/slm/api-keys" in script and '--api-key "$@"' in script
    assert "--enable-auto-tool-choice --tool-parser-plugin /opt/slm/tool-calling/phi4_tool_parser.py" in script
    assert "--tool-call-parser phi4_mini_markers" in script
    assert {"name": "HF_TOKEN_PATH", "value": "/var/run/secrets/slm/hf-token"} in container["env"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "shm" and mounts["/var/run/secrets/slm"]["readOnly"] is True


# --- routes, auth, network ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", KUBERNETES_STACKS)
def test_every_backend_route_requires_an_api_key(stack: str) -> None:
    rec = with_web_ui(stack)
    routes = {m["metadata"]["name"] for m in kinds(rec, "HTTPRoute")} - {"open-webui", "https-redirect"}
    assert routes == set(recording_backends(stack))
    policy = one(rec, "SecurityPolicy", "api-key-auth")
    assert {t["name"] for t in policy["spec"]["targetRefs"]} == routes
    assert policy["spec"]["apiKeyAuth"]["credentialRefs"] == [
        {"group": "", "kind": "Secret", "name": "gateway-api-keys"}
    ]
    assert policy["spec"]["apiKeyAuth"]["extractFrom"] == [{"headers": ["authorization"]}]


def recording_backends(stack: str) -> list[str]:
    from tests.conftest import stack_value

    return [name for name, b in stack_value(stack, "backends").items() if b.get("enabled")]


def test_routes_use_only_the_tls_listener(rendered: Any) -> None:
    rec = rendered("prod")
    gateway = one(rec, "Gateway", "slm-serving")
    assert [listener["protocol"] for listener in gateway["spec"]["listeners"]] == ["HTTPS"]
    for route in kinds(rec, "HTTPRoute"):
        assert route["spec"]["parentRefs"] == [{"name": "slm-serving", "sectionName": "https"}]
        rule = route["spec"]["rules"][0]
        assert rule["timeouts"]["request"] == "900s"


def test_default_deny_then_only_named_flows(rendered: Any) -> None:
    rec = rendered("prod")
    policies = {m["metadata"]["name"]: m["spec"] for m in kinds(rec, "NetworkPolicy")}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    clients = policies["allow-clients-to-backends"]["ingress"][0]["from"]
    assert clients == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "envoy",
                    "gateway.envoyproxy.io/owning-gateway-name": "slm-serving",
                }
            },
        }
    ]
    scrape = policies["allow-metrics-scrape"]["ingress"][0]["from"]
    assert scrape == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    download = policies["allow-model-download"]["egress"][0]
    assert "10.0.0.0/8" in download["to"][0]["ipBlock"]["except"] and download["ports"] == [
        {"protocol": "TCP", "port": 443}
    ]
    # Every pod that downloads a model carries the label the download policy selects.
    downloaders = [
        w["metadata"]["name"]
        for w in kinds(rec, "Deployment") + kinds(rec, "Job")
        if w["spec"]["template"]["metadata"]["labels"].get("slm-serving/downloads-models") == "true"
    ]
    assert set(downloaders) >= {"vllm", f"ollama-pull-{_ollama_key(rec)}"}


def _ollama_key(rec: recording.Recording) -> str:
    job = next(j for j in kinds(rec, "Job") if j["metadata"]["name"].startswith("ollama-pull-"))
    return job["metadata"]["name"].removeprefix("ollama-pull-")


def test_internal_only_has_no_public_address() -> None:
    rec = run_stack("prod", overrides={"gateway": {"internalOnly": True}})
    assert not [r for r in rec.resources if r.type == "azure-native:network:PublicIPAddress"]
    service = one(rec, "EnvoyProxy", "slm-serving-proxy")["spec"]["provider"]["kubernetes"]["envoyService"]
    assert service["annotations"]["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"
    local = run_stack("local", overrides={"gateway": {"internalOnly": True}})
    assert (
        one(local, "EnvoyProxy", "slm-serving-proxy")["spec"]["provider"]["kubernetes"]["envoyService"]["type"]
        == "ClusterIP"
    )


def test_acme_with_a_domain_self_signed_without(rendered: Any) -> None:
    issuers = {m["metadata"]["name"]: m["spec"] for m in kinds(rendered("prod"), "Issuer")}
    assert issuers["self-signed"] == {"selfSigned": {}} and "ca" in issuers["slm-serving-ca"]
    rec = run_stack("prod", overrides={"gateway": {"domain": "llm.example.com", "acmeEmail": "ops@example.com"}})
    acme = one(rec, "Issuer", "acme")["spec"]["acme"]
    assert acme["email"] == "ops@example.com"
    assert acme["solvers"][0]["http01"]["gatewayHTTPRoute"]["parentRefs"][0]["sectionName"] == "http"
    assert one(rec, "Certificate", "gateway-tls")["spec"]["dnsNames"] == ["llm.example.com"]
    assert one(rec, "HTTPRoute", "https-redirect")["spec"]["rules"][0]["filters"][0]["type"] == "RequestRedirect"


# --- autoscaling ----------------------------------------------------------------------------------


def test_queue_depth_scalers_with_per_stack_bounds() -> None:
    rec = run_stack(
        "prod",
        overrides={
            "backends": {
                "vllm": {"enabled": True, "device": "gpu", "scaling": {"minReplicas": 1, "maxReplicas": 4}},
                # To zero on a GPU backend: prod's t4spot pool scales to zero (a CPU backend may not).
                "ollama": {
                    "enabled": True,
                    "device": "gpu",
                    "scaling": {"minReplicas": 0, "maxReplicas": 3, "queueTarget": 8},
                },
            }
        },
    )
    vllm = one(rec, "ScaledObject", "vllm")["spec"]
    assert (vllm["minReplicaCount"], vllm["maxReplicaCount"]) == (1, 4)
    trigger = vllm["triggers"][0]
    assert trigger["type"] == "prometheus" and "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    ollama = one(rec, "ScaledObject", "ollama")["spec"]
    assert ollama["minReplicaCount"] == 0 and ollama["triggers"][0]["metadata"]["threshold"] == "8"
    # At zero replicas the gateway's unserved requests wake it.
    assert "envoy_cluster_upstream_cx_none_healthy" in ollama["triggers"][0]["metadata"]["query"]
    # KEDA owns the replica count of a scaled Deployment.
    assert "replicas" not in one(rec, "Deployment", "ollama")["spec"]


def test_fixed_replicas_without_a_range(rendered: Any) -> None:
    rec = rendered("local")
    assert not kinds(rec, "ScaledObject")
    assert one(rec, "Deployment", "onnx")["spec"]["replicas"] == 1


# --- ownership and switches -----------------------------------------------------------------------


def _owned_by(rec: recording.Recording, component_type: str, name: str) -> list[recording.Registration]:
    owners = {r.urn for r in rec.resources if r.type == component_type and r.name.endswith(f"-{name}")}
    return [r for r in rec.resources if r.parent in owners]


def test_disabling_a_backend_removes_every_object_it_owned(rendered: Any) -> None:
    full = rendered("prod")
    assert _owned_by(full, "slm:k8s:Backend", "ollama")
    rec = run_stack(
        "prod",
        overrides={
            "backends": {"vllm": {"enabled": True, "device": "gpu"}, "onnx": {"enabled": True}},
        },
    )
    assert not [r for r in rec.resources if r.type == "slm:k8s:Backend" and r.name.endswith("-ollama")]
    names = json.dumps([r.inputs.get("metadata", {}) for r in rec.resources if r.type.startswith("kubernetes:")])
    assert "ollama" not in names
    assert "ollama" not in one(rec, "SecurityPolicy", "api-key-auth")["spec"]["targetRefs"].__repr__()


def test_addons_can_be_switched_off(rendered: Any) -> None:
    addons = next(r for r in rendered("prod").resources if r.type == "slm:k8s:ClusterAddons")
    charts = {
        r.inputs["chart"]
        for r in rendered("prod").resources
        if r.type == "kubernetes:helm.sh/v4:Chart" and r.parent == addons.urn
    }
    assert charts == {
        "nvidia-device-plugin",
        "oci://docker.io/envoyproxy/gateway-helm",
        "cert-manager",
        "keda",
    }
    rec = run_stack("local", overrides={"addons": {"envoyGateway": False, "certManager": False, "keda": False}})
    assert not [r for r in rec.resources if r.type == "slm:k8s:ClusterAddons" and r.inputs]
    assert not [
        r
        for r in rec.resources
        if r.type == "kubernetes:helm.sh/v4:Chart" and "kube-prometheus" not in r.inputs["chart"]
    ]
    assert one(rec, "Gateway", "slm-serving")


def test_device_plugin_tolerates_the_gpu_taints(rendered: Any) -> None:
    chart = next(r for r in rendered("prod").resources if r.inputs.get("chart") == "nvidia-device-plugin")
    values = chart.inputs["values"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in values["tolerations"]
    terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {
        "matchExpressions": [{"key": "kubernetes.azure.com/accelerator", "operator": "In", "values": ["nvidia"]}]
    } in terms


def test_charts_are_pinned_and_dependants_wait_for_crds(rendered: Any) -> None:
    rec = rendered("prod")
    charts = [r for r in rec.resources if r.type == "kubernetes:helm.sh/v4:Chart"]
    for chart in charts:
        assert chart.inputs["version"][0].isdigit() or chart.inputs["version"].startswith("v")
    cert_manager = next(r for r in charts if r.inputs["chart"] == "cert-manager")
    envoy = next(r for r in charts if "gateway-helm" in r.inputs["chart"])
    assert envoy.urn in cert_manager.depends_on
    gateway = next(r for r in rec.resources if r.type == "slm:k8s:ServingGateway")
    children = [r for r in rec.resources if r.parent == gateway.urn]
    assert len(children) > 8
    for child in children:
        assert {envoy.urn, cert_manager.urn} <= set(child.depends_on), child.name
    keda = next(r for r in charts if r.inputs["chart"] == "keda")
    scaled = run_stack("prod", overrides={"backends": {"onnx": {"enabled": True, "scaling": {"maxReplicas": 2}}}})
    scaler = next(r for r in scaled.resources if r.type == "kubernetes:keda.sh/v1alpha1:ScaledObject")
    assert keda.urn in scaler.depends_on


def test_ollama_serves_from_a_read_only_model_volume(rendered: Any) -> None:
    """The pull Job writes the models; the server mounts them read-only and prunes nothing at start."""
    rec = rendered("prod")
    spec = pod_spec(one(rec, "Deployment", "ollama"))
    claim = next(v for v in spec["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    container = spec["containers"][0]
    assert {m["mountPath"]: m.get("readOnly") for m in container["volumeMounts"]}["/models"] is True
    assert {"name": "OLLAMA_NOPRUNE", "value": "1"} in container["env"]
    job = pod_spec(
        one(rec, "Job", next(j["metadata"]["name"] for j in kinds(rec, "Job") if "ollama" in j["metadata"]["name"]))
    )
    assert not {m["mountPath"]: m.get("readOnly") for m in job["containers"][0]["volumeMounts"]}["/models"]
