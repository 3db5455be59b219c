"""Log Analytics workspace: AKS container insights and diagnostics land here."""

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import operationalinsights


@dataclass(frozen=True)
class LogAnalyticsArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    retention_days: int
    tags: Mapping[str, str]
    protect: bool


class LogAnalytics(pulumi.ComponentResource):
    workspace_id: pulumi.Output[str]

    def __init__(self, name: str, args: LogAnalyticsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:LogAnalytics", name, None, opts)
        workspace = operationalinsights.Workspace(
            f"{name}-logs",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku={"name": "PerGB2018"},
            retention_in_days=args.retention_days,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.workspace_id = workspace.id
        self.register_outputs({"workspace_id": self.workspace_id})
