"""Map recorded azure-native resources to an ARM deployment template, for scanners that read ARM
(checkov). azure-native inputs are ARM's request body with `properties` flattened and the name
parameters added; this puts them back where ARM keeps them.

Scanner exceptions live here, next to the mapping, each with the reason it does not apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# azure-native type token -> (ARM resource type, REST API version the provider uses).
ARM_TYPES: dict[str, tuple[str, str]] = {
    "azure-native:resources:ResourceGroup": ("Microsoft.Resources/resourceGroups", "2024-03-01"),
    "azure-native:network:VirtualNetwork": ("Microsoft.Network/virtualNetworks", "2024-05-01"),
    "azure-native:network:Subnet": ("Microsoft.Network/virtualNetworks/subnets", "2024-05-01"),
    "azure-native:network:NetworkSecurityGroup": ("Microsoft.Network/networkSecurityGroups", "2024-05-01"),
    "azure-native:network:PublicIPAddress": ("Microsoft.Network/publicIPAddresses", "2024-05-01"),
    "azure-native:network:NetworkInterface": ("Microsoft.Network/networkInterfaces", "2024-05-01"),
    "azure-native:operationalinsights:Workspace": ("Microsoft.OperationalInsights/workspaces", "2023-09-01"),
    "azure-native:containerregistry:Registry": (
        "Microsoft.ContainerRegistry/registries",
        "2023-01-01-preview",
    ),
    "azure-native:keyvault:Vault": ("Microsoft.KeyVault/vaults", "2024-11-01"),
    "azure-native:keyvault:Secret": ("Microsoft.KeyVault/vaults/secrets", "2024-11-01"),
    "azure-native:containerservice:ManagedCluster": (
        "Microsoft.ContainerService/managedClusters",
        "2025-09-01",
    ),
    "azure-native:containerservice:AgentPool": (
        "Microsoft.ContainerService/managedClusters/agentPools",
        "2025-09-01",
    ),
    "azure-native:containerservice:MaintenanceConfiguration": (
        "Microsoft.ContainerService/managedClusters/maintenanceConfigurations",
        "2025-09-01",
    ),
    "azure-native:compute:VirtualMachine": ("Microsoft.Compute/virtualMachines", "2024-11-01"),
    "azure-native:compute:VirtualMachineExtension": (
        "Microsoft.Compute/virtualMachines/extensions",
        "2024-11-01",
    ),
    "azure-native:compute:Disk": ("Microsoft.Compute/disks", "2024-03-02"),
    "azure-native:authorization:RoleAssignment": ("Microsoft.Authorization/roleAssignments", "2022-04-01"),
}

# Inputs that ARM keeps outside `properties`.
_TOP_LEVEL = {"location", "tags", "sku", "identity", "kind", "zones", "extendedLocation", "plan"}
# Inputs that only name the resource or its parents (URL path segments, not body).
_PATH_PARAMETERS = {
    "resourceGroupName",
    "resourceName",
    "virtualNetworkName",
    "subnetName",
    "networkSecurityGroupName",
    "publicIpAddressName",
    "networkInterfaceName",
    "workspaceName",
    "registryName",
    "vaultName",
    "secretName",
    "agentPoolName",
    "configName",
    "vmName",
    "vmExtensionName",
    "diskName",
    "roleAssignmentName",
}
# Resources whose azure-native inputs already nest the body under `properties`.
_NESTED_PROPERTIES = {"azure-native:keyvault:Vault", "azure-native:keyvault:Secret"}

# Scanner checks that cannot apply to this stack, with the reason. A predicate limits a skip to the
# resources it is true for.
SKIPS: dict[str, list[tuple[str, str]]] = {
    "Microsoft.ContainerRegistry/registries": [
        (
            "CKV_AZURE_139",
            "public network access stays on: CI and the VM push/pull over the internet with Entra auth",
        ),
        (
            "CKV_AZURE_166",
            "image quarantine is a Premium preview that blocks pulls until an external scanner signs off",
        ),
    ],
    "Microsoft.KeyVault/vaults/secrets": [
        (
            "CKV_AZURE_41",
            "the HF token has no natural expiry; an expiry date would stop model downloads silently",
        ),
    ],
    "Microsoft.ContainerService/managedClusters": [
        (
            "CKV_AZURE_8",
            "the kube-dashboard add-on was removed from AKS; setting it is rejected (AddonInvalid)",
        ),
        (
            "CKV_AZURE_172",
            "secret rotation is on; the AKS API types add-on config as strings, so it is 'true', not true",
        ),
    ],
    "Microsoft.Compute/disks": [
        ("CKV_AZURE_93", "platform-managed keys encrypt the model cache; it holds public model weights only"),
    ],
    "Microsoft.Compute/virtualMachines": [
        (
            "CKV_AZURE_45",
            "its secret scan of the gzip cloud-config runs for minutes; the policy pack's no-plain-secrets "
            "decompresses custom data and checks every file it writes",
        ),
    ],
}
_CONDITIONAL_SKIPS: list[tuple[str, str, str, Any]] = [
    (
        "Microsoft.KeyVault/vaults",
        "CKV_AZURE_110",
        "purge protection is for prod; non-prod vaults must be deletable at once",
        lambda p: not p.get("enablePurgeProtection"),
    ),
    (
        "Microsoft.KeyVault/vaults",
        "CKV_AZURE_42",
        "purge protection is for prod; non-prod vaults must be deletable at once",
        lambda p: not p.get("enablePurgeProtection"),
    ),
    (
        "Microsoft.ContainerRegistry/registries",
        "CKV_AZURE_233",
        "zone redundancy needs the Premium SKU; dev/test registries are Standard",
        lambda p: p.get("zoneRedundancy") != "Enabled",
    ),
    (
        "Microsoft.Compute/virtualMachines",
        "CKV_AZURE_50",
        "GPU VMs need the NVIDIA driver extension",
        lambda p: p.get("osProfile", {}).get("allowExtensionOperations") is True,
    ),
]


def to_arm_resource(type_token: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """One azure-native resource as an ARM resource; None for types outside the table."""
    if type_token not in ARM_TYPES:
        return None
    arm_type, api_version = ARM_TYPES[type_token]
    resource: dict[str, Any] = {"type": arm_type, "apiVersion": api_version, "name": name}
    properties: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in _TOP_LEVEL:
            resource[key] = value
        elif key in _PATH_PARAMETERS:
            continue
        elif type_token in _NESTED_PROPERTIES and key == "properties":
            properties.update(value)
        else:
            properties[key] = value
    resource["properties"] = properties
    skips = [f"{check}:{why}" for check, why in SKIPS.get(arm_type, [])]
    skips += [
        f"{check}:{why}" for t, check, why, applies in _CONDITIONAL_SKIPS if t == arm_type and applies(properties)
    ]
    if skips:
        resource["metadata"] = {"checkov": skips}
    return resource


def to_arm_template(resources: Iterable[tuple[str, str, Mapping[str, Any]]]) -> dict[str, Any]:
    """(type token, name, inputs) triples -> an ARM deployment template."""
    arm = [r for t, n, i in resources if (r := to_arm_resource(t, n, i)) is not None]
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "resources": arm,
    }
