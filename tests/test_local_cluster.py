"""scripts/local-cluster: the kind cluster and local registry the `local` stack deploys to, and the
README's path to it.

No Docker daemon, kind or API server runs here: tests/drivers/kind_host.py stands in for the
`docker`, `kind` and `kubectl` commands, records each call and keeps what they would create. What the
calls must be was read from kind's "Local Registry" guide and its kind-with-registry.sh
(kubernetes-sigs/kind, site/static/examples, the registry:3 revision): containerd's registry
`config_path` set to /etc/containerd/certs.d, a hosts.toml per node sending localhost:<port> to
the registry container, the registry joined to the `kind` network, and the local-registry-hosting
ConfigMap (KEP-1755) in kube-public. The containerd patch and hosts.toml are parsed with a real TOML
parser (tomllib), the manifests with a YAML parser, and the script is linted by the real shellcheck
when it is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config.cloud import ClusterConfig
from infra.k8s.gateway import PROXY_NAMESPACE, PROXY_SERVICE
from offline.recording import PROJECT_ROOT
from tests.conftest import stack_value

SCRIPT = PROJECT_ROOT / "scripts" / "local-cluster"
DRIVER = PROJECT_ROOT / "tests" / "drivers" / "kind_host.py"
README = (PROJECT_ROOT / "README.md").read_text()

# What the `local` stack expects of the cluster, from its stack file and the config defaults.
CONTEXT = stack_value("local", "cluster")["context"]  # kind names a cluster's context kind-<name>
CLUSTER = CONTEXT.removeprefix("kind-")
REGISTRY = ClusterConfig().registry  # localhost:<port>, where the stack pushes its own images
REGISTRY_CONTAINER = "kind-registry"
HOSTS_TOML = f"/etc/containerd/certs.d/{REGISTRY}/hosts.toml"

# The documented steps, in order: (tool, arguments that identify the step).
FIRST_RUN = [
    ("docker", ["run", "-d"]),
    ("kind", ["create", "cluster", "--name", CLUSTER]),
    ("docker", ["exec", f"{CLUSTER}-control-plane", "mkdir", "-p", HOSTS_TOML.rsplit("/", 1)[0]]),
    ("docker", ["exec", "-i", f"{CLUSTER}-control-plane", "cp", "/dev/stdin", HOSTS_TOML]),
    ("docker", ["network", "connect", "kind", REGISTRY_CONTAINER]),
    ("kubectl", ["--context", CONTEXT, "apply", "-f", "-"]),
]
# Calls that create something: a rerun makes none of them.
CREATING = [("docker", ["run"]), ("docker", ["network", "connect"]), ("kind", ["create"])]


class Host:
    """The stand-in tools on PATH, their call log and what they hold."""

    def __init__(self, folder: Path) -> None:
        self.bin, self.log, self.state = folder / "bin", folder / "calls.jsonl", folder / "state.json"
        self.bin.mkdir()
        for tool in ("docker", "kind", "kubectl"):
            wrapper = self.bin / tool
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{DRIVER}" {tool} "$@"\n')
            wrapper.chmod(0o755)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "STANDIN_LOG": str(self.log),
            "STANDIN_STATE": str(self.state),
        }
        self.log.write_text("")
        return subprocess.run(
            ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False, timeout=60
        )

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def held(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())


def _is(call: dict[str, Any], tool: str, prefix: list[str]) -> bool:
    return call["tool"] == tool and call["args"][: len(prefix)] == prefix


def _steps(calls: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The calls that are documented steps, in the order they ran."""
    return [(t, p) for c in calls for t, p in FIRST_RUN if _is(c, t, p)]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    assert SCRIPT.exists(), "scripts/local-cluster is missing"
    return Host(tmp_path)


def test_first_run_follows_kinds_local_registry_guide(host: Host) -> None:
    result = host.run()
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    assert _steps(calls) == FIRST_RUN

    run = next(c["args"] for c in calls if _is(c, "docker", ["run"]))
    port = REGISTRY.rsplit(":", 1)[1]
    # Published on the host's loopback only, under the name the nodes' hosts.toml uses.
    assert ["-p", f"127.0.0.1:{port}:5000"] == run[run.index("-p") : run.index("-p") + 2]
    assert run[run.index("--name") + 1] == REGISTRY_CONTAINER
    assert run[-1].startswith("registry:3.") and "@sha256:" in run[-1], "registry image pinned by tag@digest"

    create = next(c for c in calls if _is(c, "kind", ["create", "cluster"]))
    assert "@sha256:" in create["args"][create["args"].index("--image") + 1], "node image pinned by digest"
    config = yaml.safe_load(create["stdin"])
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    patch = tomllib.loads(config["containerdConfigPatches"][0])
    assert patch["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"] == "/etc/containerd/certs.d"

    nodes = host.held()["clusters"][CLUSTER]["nodes"]
    assert set(nodes) == {f"{CLUSTER}-control-plane"}
    for files in nodes.values():
        assert tomllib.loads(files[HOSTS_TOML]) == {"host": {f"http://{REGISTRY_CONTAINER}:5000": {}}}
    assert "kind" in host.held()["containers"][REGISTRY_CONTAINER]["networks"]

    hosting = host.held()["objects"][f"{CONTEXT}/ConfigMap/kube-public/local-registry-hosting"]
    assert yaml.safe_load(hosting["data"]["localRegistryHosting.v1"])["host"] == REGISTRY


def test_a_second_run_recreates_nothing(host: Host) -> None:
    assert host.run().returncode == 0
    before = host.held()
    again = host.run()
    assert again.returncode == 0, again.stderr
    created = [c for c in host.calls() if any(_is(c, t, p) for t, p in CREATING)]
    assert created == []
    assert host.held() == before


def test_a_stopped_registry_is_started_not_replaced(host: Host) -> None:
    assert host.run().returncode == 0
    state = host.held()
    state["containers"][REGISTRY_CONTAINER]["running"] = False
    host.state.write_text(json.dumps(state))
    assert host.run().returncode == 0
    assert [c["args"] for c in host.calls() if _is(c, "docker", ["start"])] == [["start", REGISTRY_CONTAINER]]
    assert not [c for c in host.calls() if _is(c, "docker", ["run"])]


def test_delete_removes_the_cluster_and_registry_and_is_safe_to_repeat(host: Host) -> None:
    assert host.run().returncode == 0
    assert host.run("--delete").returncode == 0
    assert host.held()["clusters"] == {} and host.held()["containers"] == {}
    again = host.run("--delete")
    assert again.returncode == 0, again.stderr
    assert [c for c in host.calls() if _is(c, "kind", ["delete"]) or _is(c, "docker", ["rm"])] == []


def test_a_small_docker_host_is_warned_about(host: Host) -> None:
    host.state.write_text(
        json.dumps({"host": {"cpus": 2, "memory": 4 * 1024**3}, "containers": {}, "clusters": {}, "objects": {}})
    )
    result = host.run()
    assert result.returncode == 0 and "assumes 4 CPUs and 8 GiB" in result.stderr.replace("\n", " ")


def test_unknown_arguments_are_refused(host: Host) -> None:
    result = host.run("--remove")
    assert result.returncode == 2 and "usage" in result.stderr
    assert host.calls() == []


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (Debian `shellcheck`)")
def test_the_script_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def _section(heading: str) -> str:
    start = README.index(heading)
    end = README.find("\n## ", start + len(heading))
    return README[start : end if end != -1 else None]


def test_the_readme_path_to_the_local_stack_runs_what_exists() -> None:
    section = _section("## Local stack on kind")
    blocks = section.split("```")[1::2]
    commands = [line.strip() for block in blocks for line in block.splitlines()[1:] if line.strip()]
    commands = [c for c in commands if not c.startswith("#")]
    # In order: the cluster, the stack, the deploy.
    order = ["scripts/local-cluster", "pulumi stack select --create local", "pulumi up"]
    found = [next(i for i, c in enumerate(commands) if c.startswith(step)) for step in order]
    assert found == sorted(found), commands
    assert os.access(SCRIPT, os.X_OK) and (PROJECT_ROOT / "Pulumi.local.yaml").exists()
    # The port-forward reaches the gateway's Service at the address the stack's endpoints name.
    port = stack_value("local", "gateway")["address"].rsplit(":", 1)[1]
    forward = next(c for c in commands if "port-forward" in c)
    assert f"-n {PROXY_NAMESPACE}" in forward and f"svc/{PROXY_SERVICE}" in forward and f"{port}:443" in forward
    assert f"--context {CONTEXT}" in forward
