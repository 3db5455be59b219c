"""Key Vault with RBAC authorization that holds the Hugging Face token.

Reachable only from the stack's subnets (service endpoints) and trusted Azure services; the token is
written through the management plane, so the deployer needs no data-plane role.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_azure_native import keyvault

HF_TOKEN_SECRET = "hf-token"  # noqa: S105 (the secret's name, not its value)
GRAFANA_PASSWORD_SECRET = "grafana-admin-password"  # noqa: S105 (a name)


@dataclass(frozen=True)
class SecretVaultArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    tenant_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    allowed_cidrs: Sequence[str]
    soft_delete_retention_days: int
    purge_protection: bool
    hf_token: pulumi.Output[str]
    tags: Mapping[str, str]
    protect: bool
    # Secrets the stack generates (random, 32 characters) for workloads to read at start,
    # e.g. Grafana's admin password; exposed as `generated[name]`.
    generated_secrets: tuple[str, ...] = ()


class SecretVault(pulumi.ComponentResource):
    id: pulumi.Output[str]
    uri: pulumi.Output[str]
    generated: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SecretVaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:SecretVault", name, None, opts)
        properties: keyvault.VaultPropertiesArgsDict = {
            "tenant_id": args.tenant_id,
            "sku": {"family": keyvault.SkuFamily.A, "name": keyvault.SkuName.STANDARD},
            "enable_rbac_authorization": True,
            "enable_soft_delete": True,
            "soft_delete_retention_in_days": args.soft_delete_retention_days,
            "network_acls": {
                "default_action": "Deny",
                "bypass": "AzureServices",
                "virtual_network_rules": [{"id": sid} for sid in args.subnet_ids],
                "ip_rules": [{"value": cidr} for cidr in args.allowed_cidrs],
            },
        }
        # Azure rejects an explicit false: purge protection can only be switched on.
        if args.purge_protection:
            properties["enable_purge_protection"] = True
        vault = keyvault.Vault(
            f"{name}-kv",
            resource_group_name=args.resource_group_name,
            location=args.location,
            properties=properties,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.generated = {
            secret: random.RandomPassword(
                f"{name}-{secret}-value", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
            ).result
            for secret in args.generated_secrets
        }
        for secret_name, value in {HF_TOKEN_SECRET: args.hf_token, **self.generated}.items():
            keyvault.Secret(
                f"{name}-{secret_name}",
                resource_group_name=args.resource_group_name,
                vault_name=vault.name,
                secret_name=secret_name,
                properties={"value": pulumi.Output.secret(value), "content_type": "text/plain"},
                tags=dict(args.tags),
                opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["properties"]),
            )
        self.id = vault.id
        self.uri = vault.properties.apply(lambda p: p.vault_uri or "")
        self.register_outputs({"id": self.id, "uri": self.uri})
