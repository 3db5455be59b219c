"""Container registry: no admin user, no anonymous pull; workloads pull with their managed identity."""

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import containerregistry


@dataclass(frozen=True)
class ContainerRegistryArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    sku: str
    tags: Mapping[str, str]
    protect: bool


class ContainerRegistry(pulumi.ComponentResource):
    id: pulumi.Output[str]
    login_server: pulumi.Output[str]

    def __init__(self, name: str, args: ContainerRegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:ContainerRegistry", name, None, opts)
        premium = args.sku == "Premium"
        registry = containerregistry.Registry(
            # Registry names are alphanumeric and global; autonaming appends a random suffix.
            name.replace("-", ""),
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku={"name": args.sku},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            # Dedicated data endpoints and retention need Premium; Basic/Standard ignore them.
            data_endpoint_enabled=premium,
            zone_redundancy="Enabled" if premium else "Disabled",
            policies={"retention_policy": {"days": 7, "status": "enabled"}} if premium else None,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.id = registry.id
        self.login_server = registry.login_server
        self.register_outputs({"id": self.id, "login_server": self.login_server})
