"""What both Azure targets start from: a resource group, the network, the registry and the Key Vault."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, resources

from infra.azure.keyvault import SecretVault, SecretVaultArgs
from infra.azure.network import Network, NetworkArgs, SubnetSpec
from infra.azure.registry import ContainerRegistry, ContainerRegistryArgs
from infra.config import StackConfig


@dataclass(frozen=True)
class Foundation:
    name: str
    group: resources.ResourceGroup
    network: Network
    registry: ContainerRegistry
    vault: SecretVault
    client: authorization.AwaitableGetClientConfigResult | pulumi.Output[authorization.GetClientConfigResult]


def foundation(
    cfg: StackConfig,
    tags: Mapping[str, str],
    subnets: dict[str, SubnetSpec],
    generated_secrets: tuple[str, ...] = (),
    provided_secrets: tuple[tuple[str, pulumi.Output[str]], ...] = (),
) -> Foundation:
    s = cfg.settings
    name = f"slm-{cfg.stack}"
    protect = s.protect_resources
    client = authorization.get_client_config_output()
    group = resources.ResourceGroup(
        f"{name}-rg", location=s.location, tags=dict(tags), opts=pulumi.ResourceOptions(protect=protect)
    )
    net = Network(
        name,
        NetworkArgs(
            resource_group_name=group.name,
            location=s.location,
            address_space=str(s.network.address_space),
            subnets=subnets,
            tags=dict(tags),
        ),
    )
    registry = ContainerRegistry(
        name,
        ContainerRegistryArgs(
            resource_group_name=group.name, location=s.location, sku=s.registry.sku, tags=dict(tags), protect=protect
        ),
    )
    assert cfg.secrets.hf_token is not None  # config.load requires it for Azure targets
    vault = SecretVault(
        name,
        SecretVaultArgs(
            resource_group_name=group.name,
            location=s.location,
            tenant_id=client.tenant_id,
            subnet_ids=list(net.subnet_ids.values()),
            allowed_cidrs=[str(c) for c in s.allowed_cidrs],
            soft_delete_retention_days=s.key_vault.soft_delete_retention_days,
            purge_protection=s.purge_protection,
            hf_token=cfg.secrets.hf_token,
            generated_secrets=generated_secrets,
            provided_secrets=provided_secrets,
            tags=dict(tags),
            protect=protect,
        ),
    )
    pulumi.export("resourceGroup", group.name)
    pulumi.export("registryLoginServer", registry.login_server)
    return Foundation(name, group, net, registry, vault, client)
