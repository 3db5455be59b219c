"""The AKS stack: GPU pools, protection, identity, access and the provider it hands on."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from infra.azure import roles
from infra.azure.gpu_pool import SPOT_TAINT
from infra.azure.vm import decode_custom_data
from offline.recording import Secret
from tests.conftest import run_stack, stack_value

POOL = "azure-native:containerservice:AgentPool"
CLUSTER = "azure-native:containerservice:ManagedCluster"


def _aks(**changes: Any) -> dict[str, Any]:
    aks = copy.deepcopy(stack_value("prod", "aks"))
    aks.update(changes)
    return aks


def test_gpu_pools_are_tainted_and_autoscaled_within_config_bounds(rendered: Any) -> None:
    rec = rendered("prod")
    for configured in stack_value("prod", "aks")["gpuPools"]:
        pool = rec.one(POOL, f"gpu-{configured['name']}-").plain
        assert pool["mode"] == "User"
        assert pool["vmSize"] == configured["vmSize"]
        assert pool["enableAutoScaling"] is True
        assert pool["minCount"] == configured["minCount"]
        assert pool["maxCount"] == configured["maxCount"]
        assert "sku=gpu:NoSchedule" in pool["nodeTaints"]
        assert pool["gpuProfile"] == {"driver": "Install"}
        for key, value in configured["labels"].items():
            assert pool["nodeLabels"][key] == value


def test_min_zero_pool_really_scales_to_zero(rendered: Any) -> None:
    pool = rendered("prod").one(POOL, "gpu-t4spot-").plain
    assert (pool["minCount"], pool["count"], pool["enableAutoScaling"]) == (0, 0, True)


def test_spot_pool_settings(rendered: Any) -> None:
    pool = rendered("prod").one(POOL, "gpu-t4spot-").plain
    assert pool["scaleSetPriority"] == "Spot"
    assert pool["scaleSetEvictionPolicy"] == "Delete"
    assert pool["spotMaxPrice"] == -1
    assert SPOT_TAINT in pool["nodeTaints"]
    regular = rendered("prod").one(POOL, "gpu-a10-").plain
    assert regular["scaleSetPriority"] == "Regular" and "spotMaxPrice" not in regular


def test_ephemeral_os_disk_only_where_the_size_allows() -> None:
    pools = _aks()["gpuPools"]
    pools[0]["vmSize"] = "Standard_NC24ads_A100_v4"  # 64 GiB temp disk < 128 GiB OS disk
    rec = run_stack("prod", {"aks": _aks(gpuPools=pools)})
    assert rec.one(POOL, "gpu-a10-").plain["osDiskType"] == "Managed"
    assert rec.one(POOL, "gpu-t4spot-").plain["osDiskType"] == "Ephemeral"


def test_size_or_taint_change_is_a_create_before_delete_replacement(rendered: Any) -> None:
    before = rendered("prod").one(POOL, "gpu-a10-")
    pools = _aks()["gpuPools"]
    pools[0]["vmSize"] = "Standard_NV72ads_A10_v5"
    resized = run_stack("prod", {"aks": _aks(gpuPools=pools)}).one(POOL, "gpu-a10-")
    pools[0]["taints"] = ["sku=gpu:NoSchedule", "team=ml:NoSchedule"]
    retainted = run_stack("prod", {"aks": _aks(gpuPools=pools)}).one(POOL, "gpu-a10-")

    names = {before.plain["agentPoolName"], resized.plain["agentPoolName"], retainted.plain["agentPoolName"]}
    assert len(names) == 3, "a new size or taint set must get a new Azure pool name"
    for name in names:
        assert re.fullmatch(r"a10[0-9a-f]{4}", name)
    for pool in (before, resized, retainted):
        assert pool.urn == before.urn, "same Pulumi resource, so preview shows a replacement"
        assert {"vmSize", "nodeTaints", "agentPoolName"} <= set(pool.replace_on_changes)
        assert pool.delete_before_replace is False  # the new pool comes up before the old one goes
        assert "count" in pool.ignore_changes


def test_prod_protects_what_holds_data_or_identity(rendered: Any) -> None:
    rec = rendered("prod")
    for type_ in (
        "azure-native:resources:ResourceGroup",
        CLUSTER,
        "azure-native:containerregistry:Registry",
        "azure-native:keyvault:Vault",
        "azure-native:operationalinsights:Workspace",
    ):
        assert rec.one(type_).protect, f"{type_} is not protected in prod"
    vault = rec.one("azure-native:keyvault:Vault").plain["properties"]
    assert vault["enablePurgeProtection"] is True and vault["softDeleteRetentionInDays"] == 90


def test_dev_protects_nothing_and_can_be_destroyed(rendered: Any) -> None:
    rec = rendered("dev")
    assert not [r.name for r in rec.resources if r.protect]
    assert "enablePurgeProtection" not in rec.one("azure-native:keyvault:Vault").plain["properties"]


def test_registry_admin_user_is_off(rendered: Any) -> None:
    for stack in ("prod", "dev"):
        registry = rendered(stack).one("azure-native:containerregistry:Registry").plain
        assert registry["adminUserEnabled"] is False
        assert registry["anonymousPullEnabled"] is False


def test_cluster_access_is_entra_only(rendered: Any) -> None:
    cluster = rendered("prod").one(CLUSTER).plain
    assert cluster["disableLocalAccounts"] is True
    assert cluster["enableRBAC"] is True
    assert cluster["aadProfile"]["managed"] is True and cluster["aadProfile"]["enableAzureRBAC"] is True
    assert cluster["apiServerAccessProfile"]["authorizedIPRanges"] == stack_value("prod", "allowedCidrs")


def test_cluster_features(rendered: Any) -> None:
    cluster = rendered("prod").one(CLUSTER).plain
    assert cluster["oidcIssuerProfile"] == {"enabled": True}
    # Nothing federates an identity or mounts the vault: both stay off (turned off on existing clusters).
    assert cluster["securityProfile"]["workloadIdentity"] == {"enabled": False}
    assert cluster["addonProfiles"]["azureKeyvaultSecretsProvider"] == {"enabled": False}
    assert cluster["addonProfiles"]["omsagent"]["enabled"] is True
    assert cluster["networkProfile"]["networkPolicy"] == "cilium"
    assert cluster["autoUpgradeProfile"] == {"upgradeChannel": "patch", "nodeOSUpgradeChannel": "NodeImage"}
    system = cluster["agentPoolProfiles"][0]
    assert system["mode"] == "System" and system["osDiskType"] == "Ephemeral"
    windows = rendered("prod").of_type("azure-native:containerservice:MaintenanceConfiguration")
    assert sorted(w.plain["configName"] for w in windows) == [
        "aksManagedAutoUpgradeSchedule",
        "aksManagedNodeOSUpgradeSchedule",
    ]
    for w in windows:
        window = w.plain["maintenanceWindow"]
        assert window["schedule"]["weekly"]["dayOfWeek"] == "Sunday" and window["durationHours"] == 4


def test_role_assignments_are_least_privilege(rendered: Any) -> None:
    rec = rendered("prod")
    by_name = {r.name: r.plain for r in rec.of_type("azure-native:authorization:RoleAssignment")}
    acr = by_name["slm-prod-acr-pull"]
    assert acr["roleDefinitionId"].endswith(roles.ACR_PULL)
    assert acr["principalId"] == "33333333-3333-3333-3333-333333333333"  # the kubelet identity
    assert "containerregistry:Registry/slmprod-" in acr["scope"]
    # The control plane joins the gateway's load balancer to the subnet and to its static IP.
    for name, scope in (
        ("slm-prod-gateway-subnet-network-contributor", "network:Subnet/"),
        ("slm-prod-gateway-pip-network-contributor", "network:PublicIPAddress/"),
    ):
        assert by_name[name]["roleDefinitionId"].endswith(roles.NETWORK_CONTRIBUTOR)
        assert scope in by_name[name]["scope"], by_name[name]["scope"]
    assert set(by_name) == {
        "slm-prod-acr-pull",
        "slm-prod-deployer-admin",
        "slm-prod-gateway-subnet-network-contributor",
        "slm-prod-gateway-pip-network-contributor",
    }


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_only_an_identity_that_reads_the_vault_may(rendered: Any, stack: str) -> None:
    """On AKS no workload reads Key Vault (pods get Kubernetes Secrets), so nothing may; on the VM the
    one reader is the VM's identity, whose boot script fetches the secrets."""
    rec = rendered(stack)
    on_vault = [
        r.plain
        for r in rec.of_type("azure-native:authorization:RoleAssignment")
        if "keyvault:Vault" in r.plain["scope"]
    ]
    if rec.of_type(CLUSTER):
        assert on_vault == []
    else:
        # The VM's system-assigned identity (the recording mock gives it this principal).
        assert rec.one("azure-native:compute:VirtualMachine").plain["identity"] == {"type": "SystemAssigned"}
        assert [(a["roleDefinitionId"].rsplit("/", 1)[1], a["principalId"]) for a in on_vault] == [
            (roles.KEY_VAULT_SECRETS_USER, "55555555-5555-5555-5555-555555555555")
        ]


def test_provider_gets_the_kubeconfig_as_a_secret(rendered: Any) -> None:
    rec = rendered("prod")
    provider = rec.one("pulumi:providers:kubernetes")
    assert isinstance(provider.inputs["kubeconfig"], Secret)
    assert "--login" in provider.plain["kubeconfig"] and "azurecli" in provider.plain["kubeconfig"]
    # The cluster's resource id: stable for the cluster's life, unlike its credentials.
    assert "containerservice:ManagedCluster/slm-prod-aks-" in provider.plain["clusterIdentifier"]


def test_first_preview_does_not_need_the_cluster(rendered: Any) -> None:
    rec = rendered("prod", True)
    assert isinstance(rec.exports["kubeconfig"], Secret)
    assert rec.one("kubernetes:core/v1:Namespace", "slm-prod-ns")


_WORKLOADS = (
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:batch/v1:Job",
)


def _writable(paths: list[str]) -> set[str]:
    return {p.split(":")[1] if ":" in p else p for p in paths}


def test_every_pod_runs_as_non_root_and_open_webui_as_on_the_vm() -> None:
    """Every pod the stack renders (Helm charts' own pods are the policy pack's) runs as non-root;
    Open WebUI has a read-only root filesystem with the same writable paths as on the VM."""
    rec = run_stack("prod", {"webUi": {"enabled": True}})
    pods = [(r.name, r.plain["spec"]["template"]["spec"]) for kind in _WORKLOADS for r in rec.of_type(kind)]
    assert len(pods) >= 3
    for name, pod in pods:
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("runAsUser", 10001) != 0, name
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            context = container.get("securityContext", {})
            assert pod_context.get("runAsNonRoot") is True or context.get("runAsNonRoot") is True, container["name"]
            assert context.get("runAsUser", 10001) != 0, container["name"]
            assert context.get("readOnlyRootFilesystem") is True, container["name"]
    web_ui = next(pod for name, pod in pods if name.endswith("web-ui-deployment"))
    container = web_ui["containers"][0]
    assert web_ui["securityContext"]["runAsUser"] == 10001
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/app/backend/data", "/app/backend/static", "/tmp"}
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["STATIC_DIR"] == "/app/backend/static" and env["DATA_DIR"] == "/app/backend/data"
    # start.sh writes into the read-only app folder (its log, a generated key): not used.
    script = container["command"][2]
    assert "start.sh" not in script and "exec uvicorn open_webui.main:app" in script
    vm = yaml.safe_load(
        yaml.safe_load(
            decode_custom_data(
                run_stack("dev", {"webUi": {"enabled": True}})
                .one("azure-native:compute:VirtualMachine")
                .plain["osProfile"]["customData"]
            )
        )["write_files"][0]["content"]
    )["services"]["webui"]
    assert vm["read_only"] is True and vm["user"] == "10001:10001"
    assert _writable(vm["tmpfs"]) | _writable(vm["volumes"]) == writable
    assert {k: vm["environment"][k] for k in ("HOME", "DATA_DIR", "STATIC_DIR")} == {
        k: env[k] for k in ("HOME", "DATA_DIR", "STATIC_DIR")
    }
    assert vm["entrypoint"][2].endswith(script[script.index("cp -R") :].replace("$", "$$"))
