"""The gateway's address on AKS, known before the cluster's load balancer exists: a static public IP
with a DNS label (public gateway) or a fixed private IP in the AKS subnet (internal-only gateway).
The Envoy service is told to use it through the Azure cloud provider's service annotations."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network

from infra.azure import roles

# The cloud provider's annotations (AKS): which address and where it lives.
PIP_NAME_ANNOTATION = "service.beta.kubernetes.io/azure-pip-name"
PIP_GROUP_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-resource-group"
INTERNAL_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-internal"
INTERNAL_IP_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-ipv4"


@dataclass(frozen=True)
class GatewayAddressArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    # Azure DNS label of the public IP (infra/endpoints.azure_dns_label).
    dns_label: str
    subnet_id: pulumi.Input[str]
    subnet_cidr: str
    internal_only: bool
    cluster_principal_id: pulumi.Input[str]
    subscription_id: pulumi.Input[str]
    tags: Mapping[str, str]
    protect: bool


def internal_ip(subnet_cidr: str) -> str:
    """A fixed address near the end of the subnet: nodes take addresses from its start."""
    subnet = ipaddress.IPv4Network(subnet_cidr)
    return str(subnet.network_address + subnet.num_addresses - 6)


class GatewayAddress(pulumi.ComponentResource):
    # What clients connect to: the DNS name (public) or the private IP (internal).
    host: pulumi.Output[str]
    service_annotations: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: GatewayAddressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:GatewayAddress", name, None, opts)
        # The cluster identity creates the load balancer frontend in our subnet.
        roles.assign_role(
            f"{name}-subnet-network-contributor",
            subscription_id=args.subscription_id,
            role_id=roles.NETWORK_CONTRIBUTOR,
            principal_id=args.cluster_principal_id,
            scope=args.subnet_id,
            parent=self,
        )
        if args.internal_only:
            address = internal_ip(args.subnet_cidr)
            self.host = pulumi.Output.from_input(address)
            self.service_annotations = pulumi.Output.from_input(
                {INTERNAL_ANNOTATION: "true", INTERNAL_IP_ANNOTATION: address}
            )
        else:
            group = pulumi.Output.from_input(args.resource_group_name)
            ip = network.PublicIPAddress(
                f"{name}-pip",
                resource_group_name=args.resource_group_name,
                location=args.location,
                sku={"name": "Standard", "tier": "Regional"},
                public_ip_allocation_method="Static",
                public_ip_address_version="IPv4",
                dns_settings={"domain_name_label": args.dns_label},
                tags=dict(args.tags),
                # Clients and DNS records point at this address: keep it across a replaced cluster.
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
            )
            roles.assign_role(
                f"{name}-pip-network-contributor",
                subscription_id=args.subscription_id,
                role_id=roles.NETWORK_CONTRIBUTOR,
                principal_id=args.cluster_principal_id,
                scope=ip.id,
                parent=self,
            )
            self.host = ip.dns_settings.apply(lambda d: (d.fqdn if d else None) or "")  # the same name, from Azure
            self.service_annotations = pulumi.Output.all(ip.name, group).apply(
                lambda parts: {PIP_NAME_ANNOTATION: parts[0], PIP_GROUP_ANNOTATION: parts[1]}
            )
        self.register_outputs({"host": self.host})
