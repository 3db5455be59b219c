"""Target `vm`: the Azure foundation and one VM that runs the backends, the TLS proxy and monitoring
with Docker Compose; it serves its own endpoints."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from infra.azure.keyvault import GRAFANA_PASSWORD_SECRET, api_key_secret, webhook_secret
from infra.azure.network import InboundRule, SubnetSpec
from infra.azure.vm import ServingVm, ServingVmArgs
from infra.config import StackConfig
from infra.endpoints import Endpoints, azure_dns_label, azure_host
from infra.targets.azure import foundation
from infra.targets.images import own_images
from infra.targets.platform import Platform
from infra.vm.compose import compose_project, described
from infra.vm.secrets import data_folders, vm_generated_secrets, vm_secret_files


def build(cfg: StackConfig, tags: Mapping[str, str]) -> Platform:
    s = cfg.settings
    allowed = [str(c) for c in s.allowed_cidrs]
    inbound = [InboundRule("ssh", 22, allowed), InboundRule("https", 443, allowed)]
    if s.gateway.domain is not None:
        # ACME's HTTP-01 validation comes from anywhere; Caddy serves only the challenge and a redirect
        # to HTTPS on port 80 (infra/vm/caddy.py).
        inbound.append(InboundRule("http-acme", 80, ["Internet"]))
    subnet = SubnetSpec(str(s.network.vm_subnet), tuple(inbound))
    # The VM reads these at boot: Grafana's admin password, one API key per client (and Open WebUI's
    # session key when it runs).
    # Alert webhook URLs carry their service's token: Key Vault secrets the VM fetches like the rest,
    # never in the Compose file or the custom data.
    webhooks = tuple(
        (webhook_secret(r.name), pulumi.Output.secret(r.webhook_url))
        for r in s.monitoring.receivers
        if r.webhook_url is not None
    )
    base = foundation(cfg, tags, {"vm": subnet}, generated_secrets=vm_generated_secrets(s), provided_secrets=webhooks)
    image_refs = own_images(cfg, base.registry.login_server)
    host = s.gateway.domain or azure_host(s, cfg.stack)
    vm = ServingVm(
        base.name,
        ServingVmArgs(
            resource_group_name=base.group.name,
            location=s.location,
            vm=s.vm,
            subnet_id=base.network.subnet_ids["vm"],
            registry_id=base.registry.id,
            key_vault_id=base.vault.id,
            key_vault_uri=base.vault.uri,
            secrets=vm_secret_files(s),
            data_folders=data_folders(described(s), s.web_ui.enabled),
            registry_login_server=base.registry.login_server,
            subscription_id=base.client.subscription_id,
            compose_yaml=pulumi.Output.all(base.registry.login_server, *image_refs.values()).apply(
                lambda parts: compose_project(
                    s, parts[0], dict(zip(image_refs, parts[1:], strict=True)), public_host=host
                )
            ),
            encryption_at_host=s.encryption_at_host,
            tags=dict(tags),
            protect=s.protect_resources,
            dns_label=azure_dns_label(s, cfg.stack),
        ),
    )
    pulumi.export("vmAddress", vm.public_ip)
    pulumi.export("grafanaAdminPassword", pulumi.Output.secret(base.vault.generated[GRAFANA_PASSWORD_SECRET]))
    pulumi.export("vmAdminUser", vm.admin_username)
    if vm.ssh_private_key is not None:
        pulumi.export("vmSshPrivateKey", vm.ssh_private_key)
    keys = pulumi.Output.secret(
        pulumi.Output.all(**{c: base.vault.generated[api_key_secret(c)] for c in s.gateway.api_key_clients})
    )
    return Platform(
        endpoints=Endpoints(address=host, api_keys=keys, gateway={"ip": vm.public_ip}, web_ui=s.web_ui.enabled)
    )
