"""The VM stack: network exposure, SSH-only access, GPU driver, model disk and a valid cloud-init."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infra.azure import roles
from infra.azure.vm import CUSTOM_DATA_LIMIT, decode_custom_data
from infra.vm.cloud_init import CloudInitArgs, cloud_config
from offline.recording import Secret, redact
from tests.conftest import run_stack, stack_value
from tests.test_compose import settings_for

SCHEMA = Path(__file__).parent / "data" / "cloud-config-schema-v1.json"
VM = "azure-native:compute:VirtualMachine"


def cloud_config_errors(text: str) -> list[str]:
    """Schema errors of a user-data document (cloud-init's own schema, draft 4)."""
    assert text.startswith("#cloud-config\n"), "user data must start with #cloud-config"
    document = yaml.safe_load(text)
    validator = jsonschema.Draft4Validator(json.loads(SCHEMA.read_text()))
    errors = []
    for error in validator.iter_errors(document):
        # oneOf errors: the deepest sub-error says what is really wrong.
        leaf = max(error.context, key=lambda e: len(e.absolute_path)) if error.context else error
        errors.append(f"{'.'.join(map(str, leaf.absolute_path)) or '<root>'}: {leaf.message}")
    return errors


def test_nsg_admits_only_allow_listed_sources(rendered: Any) -> None:
    allowed = {ipaddress.ip_network(c) for c in stack_value("dev", "allowedCidrs")}
    nsg = rendered("dev").one("azure-native:network:NetworkSecurityGroup").plain
    allows = [r for r in nsg["securityRules"] if r["access"] == "Allow" and r["direction"] == "Inbound"]
    assert sorted(r["destinationPortRange"] for r in allows) == ["22", "443"]
    for rule in allows:
        assert "sourceAddressPrefix" not in rule
        assert {ipaddress.ip_network(p) for p in rule["sourceAddressPrefixes"]} <= allowed
    deny = [r for r in nsg["securityRules"] if r["access"] == "Deny"]
    assert deny and deny[0]["sourceAddressPrefix"] == "Internet"
    assert all(deny[0]["priority"] > r["priority"] for r in allows)


def test_subnet_uses_the_nsg(rendered: Any) -> None:
    rec = rendered("dev")
    subnet = rec.one("azure-native:network:Subnet").plain
    assert "network:NetworkSecurityGroup/slm-dev-vm-nsg" in subnet["networkSecurityGroup"]["id"]


def test_ssh_keys_only(rendered: Any) -> None:
    linux = rendered("dev").one(VM).plain["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"][0]["keyData"].startswith("ssh-ed25519 ")


def test_configured_ssh_key_replaces_the_generated_one() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVuZXJhdGVkLWZvci10ZXN0cw user@laptop"
    rec = run_stack("dev", {"vm": {**stack_value("dev", "vm"), "sshPublicKey": key}})
    assert rec.of_type("tls:index/privateKey:PrivateKey") == []
    assert "vmSshPrivateKey" not in rec.exports
    assert rec.one(VM).plain["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == key


def test_gpu_size_gets_the_driver_extension_and_cpu_size_does_not(rendered: Any) -> None:
    ext = rendered("dev").one("azure-native:compute:VirtualMachineExtension").plain
    assert (ext["publisher"], ext["type"]) == ("Microsoft.HpcCompute", "NvidiaGpuDriverLinux")
    cpu_only = {"vllm": {"enabled": False}, "ollama": {"enabled": True, "device": "cpu"}}
    rec = run_stack("dev", {"vm": {"size": "Standard_D8s_v5"}, "backends": cpu_only})
    assert rec.of_type("azure-native:compute:VirtualMachineExtension") == []
    assert rec.one(VM).plain["osProfile"]["allowExtensionOperations"] is False


def test_model_disk_outlives_the_vm(rendered: Any) -> None:
    rec = rendered("dev")
    disk = rec.one("azure-native:compute:Disk").plain
    assert disk["diskSizeGB"] == stack_value("dev", "vm")["dataDiskSizeGb"]
    attached = rec.one(VM).plain["storageProfile"]["dataDisks"][0]
    assert attached["createOption"] == "Attach" and attached["deleteOption"] == "Detach"


def test_vm_identity_pulls_images_and_reads_the_token(rendered: Any) -> None:
    rec = rendered("dev")
    assignments = {r.name: r.plain for r in rec.of_type("azure-native:authorization:RoleAssignment")}
    assert set(assignments) == {"slm-dev-acr-pull", "slm-dev-kv-secrets-user"}
    assert assignments["slm-dev-acr-pull"]["roleDefinitionId"].endswith(roles.ACR_PULL)
    assert assignments["slm-dev-kv-secrets-user"]["roleDefinitionId"].endswith(roles.KEY_VAULT_SECRETS_USER)
    for a in assignments.values():
        assert a["principalId"] == "55555555-5555-5555-5555-555555555555"


def test_rendered_cloud_init_is_valid_cloud_config(rendered: Any) -> None:
    custom_data = rendered("dev").one(VM).plain["osProfile"]["customData"]
    text = decode_custom_data(custom_data)
    assert cloud_config_errors(text) == []
    document = yaml.safe_load(text)
    paths = {f["path"]: f for f in document["write_files"]}
    compose = yaml.safe_load(paths["/opt/slm-serving/compose.yaml"]["content"])
    assert compose["services"], "the Compose project has no service"
    assert "/usr/local/sbin/slm-install-nvidia-toolkit" in paths  # GPU size
    assert ["systemctl", "enable", "--now", "slm-serving.service"] in document["runcmd"]
    fetch = paths["/usr/local/sbin/slm-fetch-secrets"]["content"]
    assert '"https://slm-dev-kv.vault.azure.net/secrets/$1?api-version=7.4"' in fetch
    assert "fetch hf_token hf-token" in fetch and "fetch grafana_admin_password grafana-admin-password" in fetch


def test_cloud_init_carries_no_secret() -> None:
    text = cloud_config(
        CloudInitArgs(
            "services: {}\n",
            True,
            "https://kv.vault.azure.net/",
            (("hf-token", "hf_token"),),
            "acr.azurecr.io",
            data_folders=(("models", 10001), ("webui", 0)),
        )
    )
    assert "hf_" not in text.replace("hf_token", "")  # only the file name, never a token value
    assert cloud_config_errors(text) == []
    runcmd = yaml.safe_load(text)["runcmd"]
    assert ["install", "-d", "-o", "10001", "-g", "10001", "-m", "0755", "/var/lib/slm-serving/models"] in runcmd
    assert ["install", "-d", "-o", "0", "-g", "0", "-m", "0755", "/var/lib/slm-serving/webui"] in runcmd


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("#cloud-config\npakages: [vim]\n", "'pakages' was unexpected"),
        ("#cloud-config\nruncmd: 'echo hi'\n", "runcmd: 'echo hi' is not of type 'array'"),
        ("#cloud-config\nwrite_files: [{content: x}]\n", "'path' is a required property"),
    ],
)
def test_the_schema_check_rejects_bad_documents(document: str, expected: str) -> None:
    assert any(expected in e for e in cloud_config_errors(document))


def _compose(rec: Any) -> dict[str, Any]:
    custom_data = rec.one(VM).plain["osProfile"]["customData"]
    files = {f["path"]: f["content"] for f in yaml.safe_load(decode_custom_data(custom_data))["write_files"]}
    return yaml.safe_load(files["/opt/slm-serving/compose.yaml"])


def test_vm_runs_monitoring_with_the_shared_rules_and_dashboards(rendered: Any) -> None:
    from infra.monitoring_files import THRESHOLDS_FILE, dashboards, target_rule_files

    compose = _compose(rendered("dev"))
    services, configs = compose["services"], compose["configs"]
    assert {"prometheus", "grafana", "node-exporter", "dcgm-exporter"} <= set(services)
    settings = settings_for("dev")
    # Compose reads `$$` as `$` (alert templates, dashboard variables).
    rules = target_rule_files(settings)
    assert THRESHOLDS_FILE in rules and len(rules) == 3
    mounts = {m["source"]: m["target"] for m in services["prometheus"]["configs"]}
    for name, text in rules.items():
        config = f"rules-{Path(name).stem}"
        assert configs[config]["content"].replace("$$", "$") == text
        assert mounts[config] == f"/etc/prometheus/rules/{name}"
    for name, text in dashboards().items():
        assert configs[f"dashboard-{Path(name).stem}"]["content"].replace("$$", "$") == text
    prometheus = yaml.safe_load(configs["prometheus"]["content"])
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    # The job names Kubernetes' monitors produce too; Ollama is measured at the proxy.
    assert jobs == {
        "slm-node": ["node-exporter:9100"],
        "slm-dcgm": ["dcgm-exporter:9400"],
        "slm-vllm": ["vllm:8000"],
        "slm-onnx": ["onnx:8000"],
        "slm-gateway": ["proxy:9180"],
    }
    assert "alerting" not in prometheus and "alertmanager" not in services  # no receivers in dev
    for name, service in services.items():
        if name != "proxy":  # the TLS proxy is the one public listener (tests/test_compose.py)
            assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), name
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name


def test_vm_thresholds_and_prices_come_from_the_stack_config() -> None:
    monitoring = {"thresholds": {"ttftP95Seconds": 2.5}, "gpuHourlyUsd": {"Standard_NC4as_T4_v3": 0.526}}
    compose = _compose(run_stack("dev", {"monitoring": monitoring}))
    thresholds = yaml.safe_load(compose["configs"]["rules-thresholds.rules"]["content"])
    rules = {
        (r["record"], r["expr"], tuple(r.get("labels", {}).items())) for g in thresholds["groups"] for r in g["rules"]
    }
    assert ("slm:threshold:ttft_p95_seconds", "vector(2.5)", ()) in rules
    assert ("slm:gpu_hourly_usd", "vector(0.526)", (("vm_size", "Standard_NC4as_T4_v3"),)) in rules
    vm_size = settings_for("dev").vm.size
    assert ("slm:node_vm_size:info", "group by (Hostname) (DCGM_FI_DEV_GPU_UTIL)", (("vm_size", vm_size),)) in rules


def _amtool_with_url_file() -> str:
    """amtool that knows webhook `url_file` (Alertmanager 0.26 and later; the image runs 0.28.1)."""
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian package `prometheus-alertmanager`)")
    version = subprocess.run([amtool, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"version (\d+)\.(\d+)", version.stdout + version.stderr)
    if found is None or (int(found[1]), int(found[2])) < (0, 26):
        pytest.skip(f"amtool {found[0] if found else '?'} predates webhook url_file (Alertmanager 0.26)")
    return amtool


def test_receivers_add_an_alertmanager_on_loopback(tmp_path: Path) -> None:
    url = "https://hooks.example.com/services/T000/B000/not-a-real-token"
    monitoring = {
        "receivers": [
            {"name": "ops-webhook", "webhookUrl": url},
            {"name": "ops-mail", "emailTo": "ops@example.com"},
        ],
        "smtpSmarthost": "smtp.example.com:587",
        "smtpFrom": "alerts@example.com",
    }
    rec = run_stack("dev", {"monitoring": monitoring})
    compose = _compose(rec)
    services, configs = compose["services"], compose["configs"]
    alertmanager = services["alertmanager"]
    assert alertmanager["image"] == "prom/alertmanager:v0.28.1" and alertmanager["ports"] == ["127.0.0.1:9093:9093"]
    assert alertmanager["read_only"] is True and "--cluster.listen-address=" in alertmanager["command"]
    prometheus = yaml.safe_load(configs["prometheus"]["content"])
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    config = yaml.safe_load(configs["alertmanager"]["content"])
    assert config["global"]["smtp_smarthost"] == "smtp.example.com:587"
    assert [r["receiver"] for r in config["route"]["routes"]] == ["ops-webhook", "ops-mail"]
    assert all(r["continue"] for r in config["route"]["routes"])
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["ops-mail"]["email_configs"][0]["to"] == "ops@example.com"
    # The webhook URL is a credential: Alertmanager reads it from the Compose secret the boot script
    # fetched from Key Vault into tmpfs.
    webhook = receivers["ops-webhook"]["webhook_configs"][0]
    assert "url" not in webhook and webhook["url_file"] == "/run/secrets/ops-webhook"
    assert alertmanager["secrets"] == [{"source": "webhook-ops-webhook", "target": "ops-webhook"}]
    assert compose["secrets"]["webhook-ops-webhook"] == {"file": "/run/slm-serving/secrets/webhook_ops-webhook"}
    assert alertmanager["group_add"] == ["10001"]  # the group the tmpfs secrets belong to
    custom_data = decode_custom_data(rec.one(VM).plain["osProfile"]["customData"])
    assert "fetch webhook_ops-webhook alert-webhook-ops-webhook" in custom_data
    stored = rec.one("azure-native:keyvault:Secret", "alert-webhook-ops-webhook").inputs
    assert stored["secretName"] == "alert-webhook-ops-webhook"
    assert isinstance(stored["properties"]["value"], Secret) and stored["properties"]["value"].value == url
    # Nowhere else in plain text: not in the custom data (the Compose file is inside it), not in any
    # resource's plain inputs, not in an export.
    assert "hooks.example.com" not in custom_data
    for resource in rec.resources:
        assert "hooks.example.com" not in json.dumps(redact(resource.inputs), default=str), resource.name
    assert "hooks.example.com" not in json.dumps(redact(rec.exports), default=str)
    amtool = _amtool_with_url_file()
    # amtool loads the file url_file names: the rendered config, with the secret where Compose mounts it.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "ops-webhook").write_text(url)
    path = tmp_path / "alertmanager.yml"
    path.write_text(configs["alertmanager"]["content"].replace("$$", "$").replace("/run/secrets/", f"{secrets}/"))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receivers" in result.stdout


def test_grafana_password_is_generated_kept_secret_and_read_from_a_file(rendered: Any) -> None:
    rec = rendered("dev")
    grafana = _compose(rec)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert isinstance(rec.exports["grafanaAdminPassword"], Secret)
    stored = rec.one("azure-native:keyvault:Secret", "grafana-admin-password").inputs["properties"]["value"]
    assert isinstance(stored, Secret)


def test_cpu_vm_has_no_gpu_exporter() -> None:
    cpu_only = {"vllm": {"enabled": False}, "ollama": {"enabled": True, "device": "cpu"}}
    compose = _compose(run_stack("dev", {"vm": {"size": "Standard_D8s_v5"}, "backends": cpu_only}))
    assert "dcgm-exporter" not in compose["services"] and "node-exporter" in compose["services"]


def test_custom_data_is_compressed_within_azures_limit(rendered: Any) -> None:
    encoded = rendered("dev").one(VM).plain["osProfile"]["customData"]
    assert len(encoded) < CUSTOM_DATA_LIMIT / 2  # headroom for more dashboards and services
    assert decode_custom_data(encoded).startswith("#cloud-config\n")


# Services left as their image's root user, each with its reason (README, Security).
ROOT_EXCEPTIONS = {"dcgm-exporter": "DCGM's host engine opens the NVIDIA devices and profiling counters"}


def test_every_service_runs_as_a_non_root_user_with_a_read_only_root() -> None:
    monitoring = {"receivers": [{"name": "ops", "webhookUrl": "https://hooks.example.com/alerts"}]}
    compose = _compose(run_stack("dev", {"webUi": {"enabled": True}, "monitoring": monitoring}))
    services = compose["services"]
    assert {"webui", "alertmanager", "dcgm-exporter", "proxy", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert service.get("read_only") is True, name
        # Stated, never the image's default by omission.
        uid, _, gid = service["user"].partition(":")
        if name in ROOT_EXCEPTIONS:
            assert (uid, gid) == ("0", "0"), name
        else:
            assert int(uid) != 0 and int(gid) != 0, name
    webui = services["webui"]
    assert webui["user"] == "10001:10001" and webui["cap_drop"] == ["ALL"]
    assert webui["volumes"] == ["/var/lib/slm-serving/webui:/app/backend/data"]
    assert sorted(webui["tmpfs"]) == ["/app/backend/static", "/tmp"]
    assert webui["environment"]["STATIC_DIR"] == "/app/backend/static"
    assert "start.sh" not in webui["entrypoint"][2]
