"""Scrape coverage: every series an alert, a recording rule or a dashboard panel reads comes from a
target the rendered stack really scrapes.

Expressions are taken from what each stack renders (PrometheusRule objects and dashboard ConfigMaps
on Kubernetes; the Compose project's rule and dashboard files on the VM) and parsed by a real
Prometheus (tests/promql_selectors.py). A series recorded by a loaded rule is covered when that
rule's inputs are; any other series names its component (tests/scrape_targets.py: SERIES_SOURCES).

Kubernetes (prod, local): a component is scraped when a ServiceMonitor or PodMonitor that the
stack's kube-prometheus-stack Prometheus selects (its chart values) matches, by namespace, label
selector and port name, a Service and the named container port of that Service's pods (or, for a
PodMonitor, the pods themselves). Our objects come from the render; what charts and controllers
create at run time comes from the stand-ins in tests/scrape_targets.py (STAND_INS: versions and
source files there). The VM (dev): a scrape job of the rendered prometheus.yml targets a service of
the Compose project on the port that service listens on.

Loaded rules must be covered with no exception. A dashboard panel may stay empty only where its
component does not run on the stack (EMPTY_BY_DESIGN).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.backends import registry
from infra.backends.description import Paths
from infra.config import StackSettings
from infra.monitoring_files import RULE_GROUP_INPUTS, shared_rule_files, target_rule_files, unloaded_groups
from infra.vm.compose import compose_project
from offline import recording
from tests.promql_selectors import PromQL, Reads, Selector, prometheus_parser
from tests.scrape_targets import (
    BACKEND_METRICS,
    CADDY,
    CERT_MANAGER,
    DCGM,
    EMPTY_BY_DESIGN,
    ENVOY,
    IMAGE_DEFAULT_PORTS,
    KUBE_PROMETHEUS_STACK_SELECTORS,
    KUBE_STATE_METRICS,
    NODE_EXPORTER,
    ONNX_SERVER,
    PROMETHEUS,
    RELEASE,
    STAND_INS,
    Monitor,
    source_of,
)
from tests.test_compose import REGISTRY, settings_for
from tests.test_serving_manifests import kinds

# What each committed stack scrapes: component -> the jobs it is scraped as.
EXPECTED_TARGETS: dict[str, dict[str, set[str]]] = {
    "prod": {
        BACKEND_METRICS: {"slm-vllm", "slm-onnx"},
        ONNX_SERVER: {"slm-onnx"},
        ENVOY: {"slm-gateway"},
        CERT_MANAGER: {"cert-manager"},
        KUBE_STATE_METRICS: {"kube-state-metrics"},
        DCGM: {"slm-dcgm"},
    },
    "local": {
        BACKEND_METRICS: {"slm-onnx"},
        ONNX_SERVER: {"slm-onnx"},
        ENVOY: {"slm-gateway"},
        CERT_MANAGER: {"cert-manager"},
        KUBE_STATE_METRICS: {"kube-state-metrics"},
    },
    "dev": {
        BACKEND_METRICS: {"slm-vllm", "slm-onnx"},
        ONNX_SERVER: {"slm-onnx"},
        CADDY: {"slm-gateway"},
        NODE_EXPORTER: {"slm-node"},
        DCGM: {"slm-dcgm"},
    },
}
# Rule groups each stack leaves out because it cannot scrape their input (infra/monitoring_files.py).
# (No committed stack sets monitoring.gpuHourlyUsd: the cost rules have no prices to join anywhere.)
EXPECTED_UNLOADED: dict[str, set[str]] = {
    "prod": {"slm-serving.cost"},
    "local": {"slm-serving.gpu-alerts", "slm-serving.gpu", "slm-serving.cost"},
    "dev": {
        "slm-serving.kubernetes-alerts",
        "slm-serving.node-sizes",
        "slm-serving.certificate-alerts",
        "slm-serving.cost",
    },
}
KUBERNETES_STACKS = ("prod", "local")


# --- What a stack loads and shows ---------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """The rules (record name -> its expressions; alerts by name) and dashboard queries of a stack."""

    recorded: dict[str, list[str]]
    alerts: dict[str, str]
    panels: list[tuple[str, str]]  # (dashboard file, expression)


def _dashboard_queries(name: str, board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield node["expr"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for expression in walk(board.get("panels", [])):
        yield name, expression
    # Template variables: `label_values(<series>, <label>)` reads that series.
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            match = re.fullmatch(r"label_values\((.+),\s*[a-zA-Z_]\w*\)", query.strip())
            assert match, f"{name}: variable {variable['name']}: unknown query {query!r}"
            yield name, match.group(1)


def _loaded(groups: list[dict[str, Any]], boards: Mapping[str, str]) -> Loaded:
    recorded: dict[str, list[str]] = {}
    alerts: dict[str, str] = {}
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                recorded.setdefault(rule["record"], []).append(rule["expr"])
            else:
                alerts[rule["alert"]] = rule["expr"]
    panels = [q for name, text in sorted(boards.items()) for q in _dashboard_queries(name, json.loads(text))]
    return Loaded(recorded, alerts, panels)


# --- Kubernetes: who is scraped -----------------------------------------------------------------
@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]  # named container ports
    components: frozenset[str]


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    labels: dict[str, str]
    selector: dict[str, str]
    ports: dict[str, int | str]  # port name -> targetPort


@dataclass(frozen=True)
class PlacedMonitor:
    namespace: str
    labels: dict[str, str]
    monitor: Monitor
    namespaces: frozenset[str] | None  # None: every namespace
    job: str | None  # a relabelling that sets `job`


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (
            (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
            or (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and present and labels[key] in values)
        ):
            return False
    return True


def _relabelled_job(relabelings: list[dict[str, Any]]) -> str | None:
    return next((r["replacement"] for r in relabelings if r.get("targetLabel") == "job"), None)


def _our_monitors(rec: recording.Recording) -> list[PlacedMonitor]:
    placed = []
    for kind in ("ServiceMonitor", "PodMonitor"):
        for manifest in kinds(rec, kind):
            spec, meta = manifest["spec"], manifest["metadata"]
            endpoints = spec["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
            assert len(endpoints) == 1, f"{kind} {meta['name']}: one endpoint expected"
            endpoint = endpoints[0]
            namespace_selector = spec.get("namespaceSelector", {})
            namespaces = (
                None
                if namespace_selector.get("any")
                else frozenset(namespace_selector.get("matchNames", [meta["namespace"]]))
            )
            selector = spec["selector"]
            placed.append(
                PlacedMonitor(
                    namespace=meta["namespace"],
                    labels=meta.get("labels", {}),
                    monitor=Monitor(
                        kind,
                        meta["name"],
                        selector.get("matchLabels", {}),
                        endpoint["port"],
                        spec.get("jobLabel"),
                        match_expressions=tuple(selector.get("matchExpressions", [])),
                    ),
                    namespaces=namespaces,
                    job=_relabelled_job(endpoint.get("relabelings", [])),
                )
            )
    return placed


def _release(value: object, release: str) -> Any:
    if isinstance(value, dict):
        return {k: _release(v, release) for k, v in value.items()}
    return value.replace(RELEASE, release) if isinstance(value, str) else value


@dataclass
class Cluster:
    pods: list[Pod]
    services: list[Service]
    monitors: list[PlacedMonitor]
    prometheus_values: dict[str, Any] | None
    prometheus_release: str | None


def _charts(rec: recording.Recording) -> list[recording.Registration]:
    return [r for r in rec.resources if r.type == "kubernetes:helm.sh/v4:Chart"]


def _cluster(rec: recording.Recording, settings: StackSettings) -> Cluster:
    backends = {b.name: b for b in registry.enabled(settings.backends, Paths(secrets="/run/secrets"))}
    pods: list[Pod] = []
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for manifest in kinds(rec, kind):
            template = manifest["spec"]["template"]
            name = manifest["metadata"]["name"]
            backend = backends.get(name)
            components: set[str] = set()
            if backend is not None and backend.metrics is not None:
                components.add(BACKEND_METRICS)
                if backend.name == "onnx":
                    components.add(ONNX_SERVER)
            ports = {
                p["name"]: int(p["containerPort"])
                for c in template["spec"]["containers"]
                for p in c.get("ports", [])
                if "name" in p
            }
            pods.append(
                Pod(manifest["metadata"]["namespace"], template["metadata"]["labels"], ports, frozenset(components))
            )
    services = [
        Service(
            m["metadata"]["namespace"],
            m["metadata"]["name"],
            m["metadata"].get("labels", {}),
            m["spec"].get("selector", {}),
            {p["name"]: p.get("targetPort", p["port"]) for p in m["spec"]["ports"] if "name" in p},
        )
        for m in kinds(rec, "Service")
    ]
    monitors = _our_monitors(rec)
    values: dict[str, Any] | None = None
    release: str | None = None
    gateways = kinds(rec, "Gateway")
    for chart in _charts(rec):
        chart_name, namespace = chart.inputs["chart"], chart.inputs["namespace"]
        chart_release = chart.inputs.get("name", chart.name)
        chart_values = recording.unwrap(chart.inputs.get("values", {}))
        if chart_name == "kube-prometheus-stack":
            values, release = chart_values, chart_release
        stand_in = STAND_INS.get(chart_name)
        if stand_in is None:
            continue
        owners = (
            [{"<gateway>": g["metadata"]["name"], "<gateway-namespace>": g["metadata"]["namespace"]} for g in gateways]
            if stand_in.component == ENVOY
            else [{}]
        )
        for owner in owners:
            labels = {k: owner.get(v, v) for k, v in _release(stand_in.pod_labels, chart_release).items()}
            pods.append(Pod(namespace, labels, dict(stand_in.container_ports), frozenset({stand_in.component})))
        if stand_in.service_ports:
            service_labels = _release(stand_in.service_labels, chart_release)
            services.append(
                Service(
                    namespace,
                    stand_in.component,
                    service_labels,
                    _release(stand_in.service_selector, chart_release),
                    dict(stand_in.service_ports),
                )
            )
        monitor = stand_in.chart_monitor
        if monitor is not None and _chart_monitor_enabled(chart_name, chart_values):
            job = _relabelled_job(chart_values.get("serviceMonitor", {}).get("relabelings", []))
            monitors.append(
                PlacedMonitor(
                    namespace,
                    _release(monitor.labels, chart_release),
                    Monitor(
                        monitor.kind,
                        monitor.name,
                        _release(monitor.match_labels, chart_release),
                        monitor.port,
                        monitor.job_label,
                    ),
                    frozenset({namespace}),
                    job,
                )
            )
    return Cluster(pods, services, monitors, values, release)


def _chart_monitor_enabled(chart: str, values: Mapping[str, Any]) -> bool:
    """Whether our values leave the chart's own monitor on (each chart's default, from its values.yaml)."""
    if chart == "kube-prometheus-stack":  # kube-state-metrics.prometheus.monitor.enabled, default true
        return values.get("kube-state-metrics", {}).get("prometheus", {}).get("monitor", {}).get("enabled", True)
    if chart == "dcgm-exporter":  # serviceMonitor.enabled, default true in 4.x; we set it
        return values.get("serviceMonitor", {}).get("enabled", True)
    return False


def _prometheus_selects(cluster: Cluster, placed: PlacedMonitor) -> bool:
    assert cluster.prometheus_values is not None
    spec = cluster.prometheus_values.get("prometheus", {}).get("prometheusSpec", {})
    nil_uses_helm, selector_key, namespace_key = KUBE_PROMETHEUS_STACK_SELECTORS[placed.monitor.kind]
    # The chart's default ({}: every namespace) is all this check knows how to read.
    assert spec.get(namespace_key, {}) == {}, f"prometheusSpec.{namespace_key} is set: extend the check"
    selector = spec.get(selector_key)
    if selector is None:
        selector = (
            {} if spec.get(nil_uses_helm, True) is False else {"matchLabels": {"release": cluster.prometheus_release}}
        )
    return _selects(selector, placed.labels)


def _monitor_targets(cluster: Cluster, placed: PlacedMonitor) -> Iterator[tuple[int, str]]:
    """(pod index, job) for each pod the monitor scrapes: by namespace, selector and port name."""
    monitor = placed.monitor
    selector = {
        "matchLabels": monitor.match_labels,
        "matchExpressions": list(monitor.match_expressions),
    }

    def in_scope(namespace: str) -> bool:
        return placed.namespaces is None or namespace in placed.namespaces

    if monitor.kind == "PodMonitor":
        for index, pod in enumerate(cluster.pods):
            if in_scope(pod.namespace) and _selects(selector, pod.labels) and monitor.port in pod.ports:
                yield index, placed.job or f"{placed.namespace}/{monitor.name}"
        return
    for service in cluster.services:
        # A ServiceMonitor's `port` names a Service port; that port's targetPort names (or numbers) a
        # container port of the Service's pods.
        target = service.ports.get(monitor.port)
        if target is None or not (in_scope(service.namespace) and _selects(selector, service.labels)):
            continue
        job = placed.job or (service.labels.get(monitor.job_label, service.name) if monitor.job_label else service.name)
        for index, pod in enumerate(cluster.pods):
            selected = pod.namespace == service.namespace and _selects({"matchLabels": service.selector}, pod.labels)
            if selected and (target in pod.ports or target in pod.ports.values()):
                yield index, job


def scraped_components(cluster: Cluster) -> dict[str, set[str]]:
    """Component -> the jobs it is scraped as, for the components all of whose pods are scraped."""
    scraped: dict[int, set[str]] = {}
    for placed in cluster.monitors:
        if _prometheus_selects(cluster, placed):
            for index, job in _monitor_targets(cluster, placed):
                scraped.setdefault(index, set()).add(job)
    components: dict[str, set[str]] = {}
    for component in {c for pod in cluster.pods for c in pod.components}:
        pods = [i for i, pod in enumerate(cluster.pods) if component in pod.components]
        if all(i in scraped for i in pods):
            components[component] = {job for i in pods for job in scraped[i]}
    return components


# --- The VM: who is scraped ---------------------------------------------------------------------
def _listens_on(name: str, service: dict[str, Any], document: dict[str, Any]) -> tuple[set[int], str | None]:
    """The ports a Compose service listens on, and the component its image is (if not a backend)."""
    image = str(service.get("image", ""))
    command = " ".join(map(str, [*service.get("entrypoint", []), *service.get("command", [])]))
    ports = {int(p) for p in re.findall(r"--port[= ](\d+)", command)}
    if image.startswith("caddy:"):
        caddyfile = document["configs"]["caddyfile"]["content"]
        metrics_sites = re.findall(r"^http://:(\d+) \{\n\s*metrics ", caddyfile, re.MULTILINE)
        return {int(p) for p in metrics_sites}, CADDY
    for repository, (component, port, _source) in IMAGE_DEFAULT_PORTS.items():
        if image.startswith(repository + ":"):
            assert "listen-address" not in command and "--address" not in command, name
            return {port}, component
    return ports, None


def vm_scraped(settings: StackSettings) -> tuple[dict[str, set[str]], dict[str, Any]]:
    document = yaml.safe_load(compose_project(settings, REGISTRY))
    return vm_components(document, settings), document


def vm_components(document: dict[str, Any], settings: StackSettings) -> dict[str, set[str]]:
    """Component -> the jobs of the rendered prometheus.yml that reach it: a Compose service, on a
    port it listens on."""
    prometheus = yaml.safe_load(document["configs"]["prometheus"]["content"])
    backends = {b.name: b for b in registry.enabled(settings.backends, Paths(secrets="/run/secrets"))}
    components: dict[str, set[str]] = {}
    for job in prometheus["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                service = document["services"].get(host)
                assert service is not None, f"job {job['job_name']}: {host} is no service of the Compose project"
                ports, component = _listens_on(host, service, document)
                if int(port) not in ports:
                    continue
                found = {component} if component else set()
                backend = backends.get(host)
                if backend is not None and backend.metrics is not None:
                    found.add(BACKEND_METRICS)
                    if backend.name == "onnx":
                        found.add(ONNX_SERVER)
                for c in found:
                    components.setdefault(c, set()).add(job["job_name"])
    return components


# --- Coverage -----------------------------------------------------------------------------------
class Coverage:
    """Why an expression would have no data on a stack: the components it reads that are not scraped
    (through recording rules down to the raw series). Covered: no cause."""

    def __init__(self, parser: PromQL, loaded: Loaded, scraped: Mapping[str, set[str]]) -> None:
        self.parser, self.loaded, self.scraped = parser, loaded, scraped
        # Every shared recording rule, loaded here or not: the inputs of a rule the stack left out.
        self.defined: dict[str, list[str]] = {}
        for text in shared_rule_files().values():
            for group in yaml.safe_load(text)["groups"]:
                for rule in group["rules"]:
                    if "record" in rule:
                        self.defined.setdefault(rule["record"], []).append(rule["expr"])
        self._causes: dict[str, frozenset[str]] = {}

    def _recorded(self, metric: str, expressions: list[str]) -> frozenset[str]:
        if metric not in self._causes:
            self._causes[metric] = frozenset({f"{metric}: a recording cycle"})
            each = [self.causes(self.parser.reads(e)) for e in expressions]
            self._causes[metric] = frozenset() if any(not c for c in each) else frozenset().union(*each)
        return self._causes[metric]

    def selector(self, selector: Selector) -> frozenset[str]:
        if selector.metric in self.loaded.recorded:
            return self._recorded(selector.metric, self.loaded.recorded[selector.metric])
        if selector.metric in self.defined:  # a shared rule this stack does not load
            causes = self._recorded("unloaded " + selector.metric, self.defined[selector.metric])
            return causes or frozenset({f"{selector.metric}: its rule is not loaded"})
        component = source_of(selector.metric)
        if component is None:
            return frozenset({f"{selector.metric}: no known source"})
        if component == PROMETHEUS:
            jobs = {job for js in self.scraped.values() for job in js}
        elif component not in self.scraped:
            return frozenset({component})
        else:
            jobs = self.scraped[component]
        job_matchers = [m for m in selector.matchers if m.label == "job" and "$" not in m.value]
        if any(all(m.matches(job) for m in job_matchers) for job in jobs):
            return frozenset()
        return frozenset({f"{component}: no job matches {selector}"})

    def causes(self, reads: Reads) -> frozenset[str]:
        found: set[str] = set()
        for selector in reads.selectors:
            found |= self.selector(selector)
        # An `or`: one side with series of its own must be covered (a side like `vector(0)` is a default).
        for sides in reads.alternatives:
            each = [self.causes(side) for side in sides if not side.is_empty()]
            if all(each):
                found |= frozenset().union(*each)
        return frozenset(found)

    def missing(self, expression: str) -> frozenset[str]:
        return self.causes(self.parser.reads(expression))


@pytest.fixture(scope="module")
def promql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromQL]:
    with prometheus_parser(tmp_path_factory.mktemp("promql")) as parser:
        yield parser


def _kubernetes_loaded(rec: recording.Recording) -> Loaded:
    groups = [g for m in kinds(rec, "PrometheusRule") for g in m["spec"]["groups"]]
    boards = {
        name: text
        for m in kinds(rec, "ConfigMap")
        if m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for name, text in m["data"].items()
    }
    return _loaded(groups, boards)


def _vm_loaded(document: dict[str, Any]) -> Loaded:
    configs = document["configs"]
    groups = [
        g for name, c in configs.items() if name.startswith("rules-") for g in yaml.safe_load(c["content"])["groups"]
    ]
    boards = {name: c["content"] for name, c in configs.items() if name.startswith("dashboard-")}
    return _loaded(groups, boards)


def _stack(stack: str, rendered: Callable[[str], recording.Recording]) -> tuple[Loaded, dict[str, set[str]]]:
    settings = settings_for(stack)
    if stack in KUBERNETES_STACKS:
        rec = rendered(stack)
        return _kubernetes_loaded(rec), scraped_components(_cluster(rec, settings))
    scraped, document = vm_scraped(settings)
    return _vm_loaded(document), scraped


def _problems(coverage: Coverage, loaded: Loaded, stack: str) -> list[str]:
    problems = []
    for name, expression in loaded.alerts.items():
        problems += [f"alert {name}: {c}" for c in sorted(coverage.missing(expression))]
    for record, expressions in loaded.recorded.items():
        for expression in expressions:
            problems += [f"recording rule {record}: {c}" for c in sorted(coverage.missing(expression))]
    for board, expression in loaded.panels:
        causes = coverage.missing(expression)
        if not causes <= EMPTY_BY_DESIGN[stack]:
            problems += [f"dashboard {board} ({expression}): {c}" for c in sorted(causes)]
    return problems


@pytest.mark.parametrize("stack", ["prod", "local", "dev"])
def test_every_series_a_rule_or_panel_reads_is_scraped(stack: str, rendered: Any, promql: PromQL) -> None:
    loaded, scraped = _stack(stack, rendered)
    assert loaded.alerts and loaded.recorded and loaded.panels
    problems = _problems(Coverage(promql, loaded, scraped), loaded, stack)
    assert not problems, f"{stack}: series no scrape target provides:\n" + "\n".join(problems)


@pytest.mark.parametrize("stack", ["prod", "local", "dev"])
def test_each_stack_scrapes_the_targets_in_the_table(stack: str, rendered: Any) -> None:
    scraped = _stack(stack, rendered)[1]
    assert scraped == EXPECTED_TARGETS[stack]


@pytest.mark.parametrize("stack", ["prod", "local", "dev"])
def test_rules_a_stack_cannot_feed_are_left_out_by_name(stack: str, rendered: Any) -> None:
    """The groups a target cannot scrape the input of are left out explicitly, the rest all loaded."""
    settings = settings_for(stack)
    assert set(unloaded_groups(settings)) == EXPECTED_UNLOADED[stack]
    loaded, _scraped = _stack(stack, rendered)
    if stack in KUBERNETES_STACKS:
        names = {g["name"] for m in kinds(rendered(stack), "PrometheusRule") for g in m["spec"]["groups"]}
    else:
        document = yaml.safe_load(compose_project(settings, REGISTRY))
        texts = [c["content"] for n, c in document["configs"].items() if n.startswith("rules-")]
        names = {g["name"] for t in texts for g in yaml.safe_load(t)["groups"]}
        # The VM's rule files say which groups they leave out.
        for group in EXPECTED_UNLOADED[stack]:
            assert any(f"# Not loaded on this target: {group} " in t for t in texts), group
    assert not names & EXPECTED_UNLOADED[stack]
    assert set(RULE_GROUP_INPUTS) - EXPECTED_UNLOADED[stack] <= names
    assert loaded.alerts


@pytest.mark.parametrize("stack", ["prod", "local", "dev"])
def test_the_rule_files_a_stack_loads_pass_promtool(stack: str, tmp_path: Path) -> None:
    """What is left after the groups are taken out is still a valid rule file set."""
    paths = []
    for name, text in target_rule_files(settings_for(stack)).items():
        paths.append(tmp_path / name)
        paths[-1].write_text(text)
    result = subprocess.run(
        ["promtool", "check", "rules", *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_vm_leaves_certificate_and_kubernetes_rules_out_because_it_runs_neither() -> None:
    """Caddy renews the VM's certificate itself and reports no expiry: the VM loads no
    CertificateExpiringSoon rather than one that can never fire."""
    unloaded = unloaded_groups(settings_for("dev"))
    assert unloaded["slm-serving.certificate-alerts"] == ("cert-manager",)
    assert unloaded["slm-serving.kubernetes-alerts"] == ("kube-state-metrics",)
    assert unloaded["slm-serving.cost"] == ("GPU prices (monitoring.gpuHourlyUsd)",)
    priced = settings_for("dev", {"monitoring": {"gpuHourlyUsd": {"Standard_NC4as_T4_v3": 0.526}}})
    assert "slm-serving.cost" not in unloaded_groups(priced)


def test_a_cluster_with_its_own_cert_manager_loads_no_certificate_alert() -> None:
    """We scrape only the cert-manager we install: with `addons.certManager: false` its alert goes."""
    settings = settings_for("local", {"addons": {"certManager": False}})
    assert "slm-serving.certificate-alerts" in unloaded_groups(settings)


def test_the_check_finds_a_monitor_whose_port_name_matches_nothing(rendered: Any) -> None:
    """The matching is by port name: a monitor on a port the Service does not name scrapes nothing."""
    rec = rendered("prod")
    cluster = _cluster(rec, settings_for("prod"))
    assert CERT_MANAGER in scraped_components(cluster)
    cluster.monitors = [
        # The pod's port name, not the Service's: a ServiceMonitor's `port` names a Service port.
        replace(p, monitor=replace(p.monitor, port="http-metrics"))
        if p.monitor.name == "slm-serving-cert-manager"
        else p
        for p in cluster.monitors
    ]
    assert CERT_MANAGER not in scraped_components(cluster)


def test_the_check_finds_a_monitor_prometheus_does_not_select(rendered: Any) -> None:
    rec = rendered("prod")
    cluster = _cluster(rec, settings_for("prod"))
    assert cluster.prometheus_values is not None
    cluster.prometheus_values["prometheus"]["prometheusSpec"].pop("serviceMonitorSelectorNilUsesHelmValues")
    # ServiceMonitors now need kube-prometheus-stack's `release` label: only kube-state-metrics' has it
    # (the PodMonitor selector is still open: the gateway stays).
    assert set(scraped_components(cluster)) == {KUBE_STATE_METRICS, ENVOY}


def test_the_check_finds_a_vm_job_on_a_port_nothing_listens_on() -> None:
    settings = settings_for("dev")
    document = yaml.safe_load(compose_project(settings, REGISTRY))
    assert vm_components(document, settings)[CADDY] == {"slm-gateway"}
    # The proxy's public port, not its metrics site: the job scrapes nothing of Caddy's.
    prometheus = document["configs"]["prometheus"]
    prometheus["content"] = prometheus["content"].replace("proxy:9180", "proxy:8443")
    assert CADDY not in vm_components(document, settings)


def test_the_parser_is_prometheus_and_rejects_what_it_rejects(promql: PromQL) -> None:
    with pytest.raises(ValueError, match="Prometheus rejects"):
        promql.reads("sum by (job (up)")
    reads = promql.reads('a{job="x"} / on () group_left () (b or c) unless d')
    assert [str(s) for s in reads.selectors] == ['a{job="x"}', "d"]
    assert [[str(s) for s in side.selectors] for side in reads.alternatives[0]] == [["b"], ["c"]]
