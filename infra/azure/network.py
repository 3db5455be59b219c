"""VNet, one subnet per workload, each behind its own NSG that admits only what the workload serves."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network


@dataclass(frozen=True)
class InboundRule:
    name: str
    port: int
    sources: Sequence[str]  # CIDRs or Azure service tags


@dataclass(frozen=True)
class SubnetSpec:
    cidr: str
    inbound: Sequence[InboundRule] = ()
    # Key Vault and ACR network rules admit traffic from subnets with these endpoints.
    service_endpoints: Sequence[str] = ("Microsoft.KeyVault", "Microsoft.ContainerRegistry")


@dataclass(frozen=True)
class NetworkArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    address_space: str
    subnets: Mapping[str, SubnetSpec]
    tags: Mapping[str, str]


# Rules start here; the explicit deny sits below them and above Azure's defaults (65000+).
_FIRST_PRIORITY = 200
_DENY_PRIORITY = 4000


def security_rules(inbound: Sequence[InboundRule]) -> list[network.SecurityRuleArgsDict]:
    """Allow each listed port from its sources, then deny everything else from the internet."""
    rules: list[network.SecurityRuleArgsDict] = []
    for index, rule in enumerate(inbound):
        rules.append(
            {
                "name": rule.name,
                "priority": _FIRST_PRIORITY + 10 * index,
                "direction": "Inbound",
                "access": "Allow",
                "protocol": "Tcp",
                "source_port_range": "*",
                "source_address_prefixes": list(rule.sources),
                "destination_address_prefix": "*",
                "destination_port_range": str(rule.port),
            }
        )
    rules.append(
        {
            "name": "deny-internet-inbound",
            "priority": _DENY_PRIORITY,
            "direction": "Inbound",
            "access": "Deny",
            "protocol": "*",
            "source_port_range": "*",
            "source_address_prefix": "Internet",
            "destination_address_prefix": "*",
            "destination_port_range": "*",
        }
    )
    return rules


class Network(pulumi.ComponentResource):
    subnet_ids: dict[str, pulumi.Output[str]]
    vnet_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=args.resource_group_name,
            location=args.location,
            address_space={"address_prefixes": [args.address_space]},
            tags=dict(args.tags),
            # Subnets are their own resources below; don't let the VNet reconcile them away.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
        )
        self.vnet_id = vnet.id
        self.subnet_ids = {}
        for subnet_name, spec in args.subnets.items():
            nsg = network.NetworkSecurityGroup(
                f"{name}-{subnet_name}-nsg",
                resource_group_name=args.resource_group_name,
                location=args.location,
                security_rules=security_rules(spec.inbound),
                tags=dict(args.tags),
                opts=child,
            )
            subnet = network.Subnet(
                f"{name}-{subnet_name}",
                resource_group_name=args.resource_group_name,
                virtual_network_name=vnet.name,
                subnet_name=subnet_name,
                address_prefix=spec.cidr,
                network_security_group={"id": nsg.id},
                service_endpoints=[{"service": s} for s in spec.service_endpoints],
                # No default outbound access: egress goes through the cluster's load balancer or the VM's IP.
                default_outbound_access=False,
                opts=child,
            )
            self.subnet_ids[subnet_name] = subnet.id
        self.register_outputs({"vnet_id": self.vnet_id, "subnet_ids": self.subnet_ids})
