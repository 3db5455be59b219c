"""The `endpoints` export: what a user pastes into an OpenAI client, for every enabled backend."""

from __future__ import annotations

import re
from typing import Any

import pytest

from offline.recording import UNKNOWN, Secret
from tests.conftest import STACKS, run_stack, stack_value

URL = re.compile(r"^https://(?P<host>[A-Za-z0-9.-]+)(:\d+)?/(?P<prefix>[a-z0-9-]+)/v1$")
HOSTS = {
    "prod": r"^slm-prod-[0-9a-f]{6}\.swedencentral\.cloudapp\.azure\.com$",
    "dev": r"^slm-dev-[0-9a-f]{6}\.swedencentral\.cloudapp\.azure\.com$",
    "local": r"^localhost$",
}


def enabled(stack: str) -> set[str]:
    return {name for name, b in stack_value(stack, "backends").items() if b.get("enabled")}


@pytest.mark.parametrize("stack", STACKS)
def test_every_enabled_backend_has_a_usable_base_url(stack: str, rendered: Any) -> None:
    endpoints = rendered(stack).exports["endpoints"]
    backends = endpoints["backends"]
    assert set(backends) == enabled(stack)
    for name, endpoint in backends.items():
        match = URL.match(endpoint["baseUrl"])
        assert match, endpoint["baseUrl"]
        assert re.match(HOSTS[stack], match["host"]), match["host"]
        assert match["prefix"] == name
        assert endpoint["model"] == endpoint["models"][0] and endpoint["model"]
    assert isinstance(rendered(stack).exports["apiKey"], Secret)


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_kubernetes_endpoints_name_the_in_cluster_urls(stack: str, rendered: Any) -> None:
    for name, endpoint in rendered(stack).exports["endpoints"]["backends"].items():
        assert endpoint["inClusterUrl"] == f"http://{name}.slm-serving.svc:8000/v1"


def test_host_routing_and_a_domain_give_one_host_per_backend() -> None:
    rec = run_stack(
        "prod", overrides={"gateway": {"domain": "llm.example.com", "acmeEmail": "o@example.com", "routing": "host"}}
    )
    for name, endpoint in rec.exports["endpoints"]["backends"].items():
        assert endpoint["baseUrl"] == f"https://{name}.llm.example.com/v1"


def test_first_preview_leaves_the_address_unknown_not_empty(rendered: Any) -> None:
    endpoints = rendered("prod", True).exports["endpoints"]
    assert endpoints is UNKNOWN or "https:///" not in str(endpoints)


def test_the_gateway_certificate_names_the_address_clients_use(rendered: Any) -> None:
    from tests.test_serving_manifests import one

    prod_host = rendered("prod").exports["endpoints"]["gateway"]["address"]
    names = one(rendered("prod"), "Certificate", "gateway-tls")["spec"]["dnsNames"]
    assert prod_host in names
    assert "localhost" in one(rendered("local"), "Certificate", "gateway-tls")["spec"]["dnsNames"]
    internal = run_stack("prod", overrides={"gateway": {"internalOnly": True}})
    spec = one(internal, "Certificate", "gateway-tls")["spec"]
    assert spec["ipAddresses"] == [internal.exports["endpoints"]["gateway"]["address"]]
