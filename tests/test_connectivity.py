"""The traffic the stack needs can flow through its own NetworkPolicies, and nothing else does: np-guard's
network-config-analyzer (`nca`, the real analyzer, offline) computes the connectivity of each rendered
Kubernetes stack (its Namespaces, Deployments, Jobs and NetworkPolicies) plus stand-in pods for what
controllers create at run time (Envoy proxies, ACME solvers, Prometheus, Grafana, KEDA, CoreDNS);
tests/connectivity_flows.py holds the tables and says which version each stand-in's labels come from.

Charts' own objects are not rendered here (no helm binary), so namespaces the stack does not police
(envoy-gateway-system, monitoring, keda, cert-manager) are open, as they are on a cluster where those
charts add no NetworkPolicy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from offline import recording
from tests import connectivity_flows as flows
from tests.conftest import run_stack
from tests.nca_support import Connection, connectivity, covers, needs_nca

DOMAIN = {"domain": "llm.example.com", "acmeEmail": "ops@example.com"}


@dataclass(frozen=True)
class Variant:
    stack: str
    target: str
    overrides: dict[str, Any]
    # Conditions that hold here: "domain" or "no-domain" (gateway.domain), "gpu" (GPU backends).
    holds: frozenset[str]


VARIANTS = {
    "prod": Variant("prod", "aks", {}, frozenset({"gpu", "no-domain"})),
    # A domain (ACME through the gateway's HTTP-01 listener) and Open WebUI.
    "prod-domain": Variant(
        "prod", "aks", {"gateway": DOMAIN, "webUi": {"enabled": True}}, frozenset({"gpu", "domain"})
    ),
    "local": Variant("local", "cluster", {}, frozenset({"no-domain"})),
    "local-domain": Variant(
        "local", "cluster", {"gateway": {**DOMAIN, "address": "llm.example.com"}}, frozenset({"domain"})
    ),
}

_KINDS = {
    "kubernetes:core/v1:Namespace",
    "kubernetes:apps/v1:Deployment",
    "kubernetes:batch/v1:Job",
    "kubernetes:networking.k8s.io/v1:NetworkPolicy",
}


@dataclass
class Analysis:
    variant: Variant
    objects: list[dict[str, Any]]
    stand_ins: dict[str, flows.StandIn]
    connections: list[Connection]

    def endpoint(self, peer: str) -> str | None:
        """nca's name for a peer (`ns/name[Kind]`), its address, or None where the stack has none."""
        spec = flows.PEERS[peer]
        if isinstance(spec, flows.Address):
            return spec.ip or flows.KUBERNETES_API[self.variant.target]
        if isinstance(spec, flows.StandIn):
            return f"{spec.namespace}/{spec.name}[Pod]" if peer in self.stand_ins else None
        found = [
            o
            for o in self.objects
            if o["kind"] == spec.kind
            and spec.labels.items() <= o["spec"]["template"]["metadata"].get("labels", {}).items()
        ]
        assert len(found) <= 1, f"{peer} matches {len(found)} {spec.kind}s"
        if not found:
            return None
        meta = found[0]["metadata"]
        return f"{meta['namespace']}/{meta['name']}[{spec.kind}]"

    def applies(self, flow: flows.Flow) -> bool:
        if flow.when is not None and flow.when not in self.variant.holds:
            return False
        return self.endpoint(flow.source) is not None and self.endpoint(flow.destination) is not None

    def allowed(self, flow: flows.Flow) -> bool:
        source, destination = self.endpoint(flow.source), self.endpoint(flow.destination)
        assert source is not None and destination is not None

        def matches(endpoint: str, peer: str, wanted: str) -> bool:
            return covers(endpoint, wanted) if isinstance(flows.PEERS[peer], flows.Address) else endpoint == wanted

        return any(
            matches(c.source, flow.source, source)
            and matches(c.destination, flow.destination, destination)
            and c.permits(flow.protocol, flow.port)
            for c in self.connections
        )


def _stand_in_objects(stand_ins: dict[str, flows.StandIn], namespaces: set[str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        for ns in sorted({s.namespace for s in stand_ins.values()} - namespaces)
    ]
    for stand_in in stand_ins.values():
        ports = [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in stand_in.ports]
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": stand_in.name, "namespace": stand_in.namespace, "labels": stand_in.labels},
                "spec": {"containers": [{"name": stand_in.name, "image": "stand-in", "ports": ports}]},
            }
        )
    return objects


def analyse(variant: Variant, folder: Path) -> Analysis:
    rec = run_stack(variant.stack, variant.overrides)
    objects = [recording.redact(r.inputs) for r in rec.resources if r.type in _KINDS and r.custom]
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    stand_ins = {
        name: spec
        for name, spec in flows.PEERS.items()
        if isinstance(spec, flows.StandIn) and (spec.when is None or spec.when in variant.holds)
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rendered.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    (folder / "stand-ins.yaml").write_text(yaml.safe_dump_all(_stand_in_objects(stand_ins, namespaces)))
    return Analysis(variant, objects, stand_ins, connectivity(folder))


_analyses: dict[str, Analysis] = {}


@pytest.fixture
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    def get(name: str) -> Analysis:
        if name not in _analyses:
            _analyses[name] = analyse(VARIANTS[name], tmp_path_factory.mktemp(f"nca-{name}"))
        return _analyses[name]

    return get


def _label(flow: flows.Flow) -> str:
    return f"{flow.source}->{flow.destination}:{flow.protocol}/{flow.port}"


@needs_nca
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_needed_flows_are_allowed(variant: str, analysed: Any) -> None:
    analysis: Analysis = analysed(variant)
    checked = [f for f in flows.MUST_ALLOW if analysis.applies(f)]
    assert checked, f"no MUST_ALLOW row applies to {variant}"
    blocked = [f"{_label(f)} ({f.why})" for f in checked if not analysis.allowed(f)]
    assert not blocked, f"{variant}: needed traffic is blocked by the NetworkPolicies: {blocked}"


@needs_nca
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_flows_are_denied(variant: str, analysed: Any) -> None:
    analysis: Analysis = analysed(variant)
    checked = [f for f in flows.MUST_DENY if analysis.applies(f)]
    assert checked, f"no MUST_DENY row applies to {variant}"
    open_ = [f"{_label(f)} ({f.why})" for f in checked if analysis.allowed(f)]
    assert not open_, f"{variant}: the NetworkPolicies admit traffic they must not: {open_}"


@needs_nca
def test_every_row_is_checked_somewhere(analysed: Any) -> None:
    """A row whose peers exist in no checked stack would pass forever without checking anything."""
    analyses = [analysed(name) for name in VARIANTS]
    dead = [_label(f) for f in [*flows.MUST_ALLOW, *flows.MUST_DENY] if not any(a.applies(f) for a in analyses)]
    assert not dead, f"rows no stack checks: {dead}"


@needs_nca
def test_the_analysis_sees_policies(analysed: Any) -> None:
    """The analyzer really reads the policies: the same pods without them can reach each other."""
    analysis: Analysis = analysed("prod")
    pairs = {(c.source, c.destination) for c in analysis.connections}
    vllm, ollama = analysis.endpoint("vllm"), analysis.endpoint("ollama")
    assert (vllm, ollama) not in pairs
    assert (analysis.endpoint("gateway"), vllm) in pairs


@pytest.mark.parametrize(
    ("text", "tcp_8000", "udp_53", "tcp_443"),
    [
        ("All connections", True, True, True),
        ("No connections", False, False, False),
        ("{protocols:TCP,dst_ports:8000}", True, False, False),
        ("{protocols:TCP, UDP,dst_ports:53}", False, True, False),
        ("{protocols:TCP,dst_ports:443,8000-8001}", True, False, True),
        ("{protocols:UDP}", False, True, False),
        ("All but {protocols:TCP,dst_ports:443}", True, True, False),
    ],
)
def test_nca_connection_text_is_read_as_nca_writes_it(text: str, tcp_8000: bool, udp_53: bool, tcp_443: bool) -> None:
    """nca's ConnectivityProperties text (2.1.0, CoreDS/ConnectivityProperties.py): groups, complements."""
    connection = Connection("a", "b", text)
    assert (connection.permits("TCP", 8000), connection.permits("UDP", 53), connection.permits("TCP", 443)) == (
        tcp_8000,
        udp_53,
        tcp_443,
    )


def test_nca_addresses_are_read_as_ranges_cidrs_or_single_addresses() -> None:
    assert covers("11.0.0.0-100.63.255.255", "100.63.0.1") and not covers("11.0.0.0-100.63.255.255", "10.0.0.1")
    assert covers("10.41.0.1", "10.41.0.1") and covers("10.41.0.0/16", "10.41.0.1")
    assert not covers("slm-serving/vllm[Deployment]", "10.41.0.1")
