"""Every committed stack file runs through the program, with known outputs and as a first preview."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.tags import REQUIRED_TAGS
from offline.recording import PROJECT_ROOT, Secret, contains_secret
from offline.render import PLACEHOLDER
from tests.conftest import STACKS, run_stack

EXPECTED = {
    "prod": {
        "azure-native:resources:ResourceGroup": 1,
        "azure-native:containerservice:ManagedCluster": 1,
        "azure-native:containerservice:AgentPool": 2,
        "azure-native:containerregistry:Registry": 1,
        "azure-native:keyvault:Vault": 1,
        "azure-native:keyvault:Secret": 1,
        "azure-native:operationalinsights:Workspace": 1,
        "pulumi:providers:kubernetes": 1,
        # slm-serving plus the add-ons': device plugin, Envoy Gateway, cert-manager, KEDA, monitoring, DCGM.
        "kubernetes:core/v1:Namespace": 7,
        "kubernetes:helm.sh/v4:Chart": 6,
        "kubernetes:apps/v1:Deployment": 3,
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute": 3,
        "kubernetes:gateway.envoyproxy.io/v1alpha1:SecurityPolicy": 1,
    },
    "dev": {
        "azure-native:resources:ResourceGroup": 1,
        "azure-native:compute:VirtualMachine": 1,
        "azure-native:compute:VirtualMachineExtension": 1,
        "azure-native:compute:Disk": 1,
        "azure-native:containerregistry:Registry": 1,
        "azure-native:keyvault:Vault": 1,
        "azure-native:network:NetworkSecurityGroup": 1,
    },
    "local": {
        "pulumi:providers:kubernetes": 1,
        # No GPU backend: no device plugin, no DCGM exporter.
        "kubernetes:core/v1:Namespace": 5,
        "kubernetes:helm.sh/v4:Chart": 4,
        # One CPU backend (ONNX) fits the laptop's 8 GiB kind node (tests/test_scheduling.py).
        "kubernetes:apps/v1:Deployment": 1,
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute": 1,
    },
}
EXPORTS = {
    "prod": {
        "target",
        "resourceGroup",
        "registryLoginServer",
        "clusterName",
        "kubeconfig",
        "endpoints",
        "apiKeys",
        "apiKey",
        "grafanaAdminPassword",
    },
    "dev": {
        "target",
        "resourceGroup",
        "registryLoginServer",
        "vmAddress",
        "vmAdminUser",
        "vmSshPrivateKey",
        "grafanaAdminPassword",
        "endpoints",
        "apiKeys",
        "apiKey",
    },
    "local": {"target", "endpoints", "apiKeys", "apiKey", "grafanaAdminPassword"},
}
SECRET_EXPORTS = {"kubeconfig", "vmSshPrivateKey", "grafanaAdminPassword", "apiKeys", "apiKey"}


@pytest.mark.parametrize("preview", [False, True], ids=["known", "preview"])
@pytest.mark.parametrize("stack", STACKS)
def test_stack_runs(stack: str, preview: bool) -> None:
    rec = run_stack(stack, preview=preview)
    counts = rec.counts()
    for type_, count in EXPECTED[stack].items():
        assert counts.get(type_) == count, f"{stack}: {type_} expected {count}, got {counts.get(type_)}"
    assert set(rec.exports) == EXPORTS[stack]
    for key in SECRET_EXPORTS & set(rec.exports):
        assert isinstance(rec.exports[key], Secret), f"export {key} is not secret"
    for key in set(rec.exports) - SECRET_EXPORTS:
        assert not contains_secret(rec.exports[key])


@pytest.mark.parametrize("stack", STACKS)
def test_every_child_has_a_parent_component(stack: str) -> None:
    rec = run_stack(stack)
    components = {r.urn for r in rec.resources if not r.custom}
    for reg in (r for r in rec.resources if r.custom):
        if reg.type == "azure-native:resources:ResourceGroup":
            continue  # the root every Azure component is placed in
        assert reg.parent in components, f"{reg.name} ({reg.type}) has no component parent"


@pytest.mark.parametrize("stack", STACKS)
def test_default_kubernetes_provider_is_disabled(stack: str) -> None:
    stack_file = yaml.safe_load((PROJECT_ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert stack_file["config"]["pulumi:disable-default-providers"] == ["kubernetes"]


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_kubernetes_objects_use_the_explicit_provider(stack: str) -> None:
    rec = run_stack(stack)
    provider = rec.one("pulumi:providers:kubernetes")
    assert provider.plain.get("clusterIdentifier"), "provider without cluster_identifier"
    k8s_objects = [r for r in rec.resources if r.type.startswith("kubernetes:")]
    assert k8s_objects
    for reg in k8s_objects:
        assert reg.provider.startswith(provider.urn + "::"), f"{reg.name} uses {reg.provider!r}"


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_in_plain_inputs_or_exports(stack: str) -> None:
    rec = run_stack(stack)
    secret_values = {PLACEHOLDER}
    for reg in rec.resources:
        for value in _plain_strings(reg.inputs):
            assert not any(s in value for s in secret_values), f"{reg.name} has a secret in plain inputs"
    for value in _plain_strings(rec.exports):
        assert PLACEHOLDER not in value and "PRIVATE KEY" not in value


def _plain_strings(value: object) -> list[str]:
    """Strings outside any Secret wrapper."""
    if isinstance(value, Secret):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _plain_strings(v)]
    return []


def test_placeholder_secret_reaches_key_vault_as_a_secret() -> None:
    rec = run_stack("prod")
    secret = rec.one("azure-native:keyvault:Secret")
    assert secret.inputs["properties"]["value"] == Secret(PLACEHOLDER)
    assert "properties" in secret.additional_secret_outputs


def test_stack_files_hold_no_secret_values() -> None:
    for path in Path(PROJECT_ROOT).glob("Pulumi.*.yaml"):
        text = path.read_text()
        assert "secure:" not in text, f"{path.name} carries an encrypted secret; keep secrets out of git"


# Child resources that ARM does not tag (they inherit their parent's context).
UNTAGGED = {
    "azure-native:network:Subnet",
    "azure-native:authorization:RoleAssignment",
    "azure-native:containerservice:MaintenanceConfiguration",
}


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_every_azure_resource_carries_the_required_tags(stack: str) -> None:
    rec = run_stack(stack)
    for reg in rec.resources:
        if not reg.type.startswith("azure-native:") or reg.type in UNTAGGED:
            continue
        tags = reg.plain.get("tags", {})
        missing = set(REQUIRED_TAGS) - set(tags)
        assert not missing, f"{reg.name} ({reg.type}) lacks tags {missing}"
        assert tags["env"] == stack and tags["stack"] == stack


def test_test_stacks_carry_their_expiry() -> None:
    rec = run_stack("dev", {"environment": "test", "expiresOn": "2026-12-01"})
    tags = rec.one("azure-native:resources:ResourceGroup").plain["tags"]
    assert tags["expires-on"] == "2026-12-01" and tags["env"] == "test"
    assert "expires-on" not in run_stack("dev").one("azure-native:resources:ResourceGroup").plain["tags"]
