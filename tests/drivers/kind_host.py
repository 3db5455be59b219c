"""Stand-in for `docker`, `kind` and `kubectl` (the first argument names which), for running
scripts/local-cluster where no Docker daemon, kind or API server can run. It records every call
(arguments and, where the real tool reads it, stdin) as a JSON line in $STANDIN_LOG, and keeps what
the real tools would have created (containers, their networks, clusters, node files, applied
objects) in $STANDIN_STATE, so a second run sees what the first made.

Only the subcommands the script uses are implemented, with the outputs and refusals of the real
tools (Docker CLI 28 `inspect -f`, `run`, `network connect`; kind v0.29.0 `get clusters`,
`get nodes`, `create cluster`, `delete cluster`; kubectl 1.33 `apply -f -`). Anything else exits 64
so an unexpected call fails the test."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

STATE = Path(os.environ["STANDIN_STATE"])
LOG = Path(os.environ["STANDIN_LOG"])


def load() -> dict[str, Any]:
    if STATE.exists():
        return json.loads(STATE.read_text())
    # The Docker host: CPUs and memory `docker info` reports.
    return {"host": {"cpus": 4, "memory": 8 * 1024**3}, "containers": {}, "clusters": {}, "objects": {}}


def fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(code)


def docker(args: list[str], state: dict[str, Any], stdin: str | None) -> None:
    match args:
        case ["info", "--format", "{{.NCPU}} {{.MemTotal}}"]:
            print(state["host"]["cpus"], state["host"]["memory"])
        case ["inspect", "-f", template, name]:
            inspect(template, state["containers"], name)
        case ["exec", node, "mkdir", "-p", folder]:
            node_files(state, node).setdefault(folder, None)
        case ["exec", "-i", node, "cp", "/dev/stdin", path]:
            node_files(state, node)[path] = stdin
        case _:
            containers(args, state["containers"])


def inspect(template: str, containers: dict[str, Any], name: str) -> None:
    if name not in containers:
        fail(f"Error: No such object: {name}")
    match template:
        case "{{.State.Running}}":
            print("true" if containers[name]["running"] else "false")
        case "{{json .NetworkSettings.Networks.kind}}":
            print(json.dumps({"NetworkID": "kind"}) if "kind" in containers[name]["networks"] else "null")
        case _:
            fail(f"docker stand-in: unexpected template {template}", 64)


def containers(args: list[str], held: dict[str, Any]) -> None:
    match args:
        case ["run", "-d", *options, image]:
            name = options[options.index("--name") + 1]
            if name in held:
                fail(
                    f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use.',
                    125,
                )
            network = options[options.index("--network") + 1]
            held[name] = {"image": image, "running": True, "networks": [network], "options": options}
        case ["start", name]:
            if name not in held:
                fail(f"Error response from daemon: No such container: {name}")
            held[name]["running"] = True
        case ["rm", "-f", name]:
            held.pop(name, None)
        case ["network", "connect", network, name]:
            if network in held[name]["networks"]:
                fail(f"Error response from daemon: endpoint with name {name} already exists in network {network}")
            held[name]["networks"].append(network)
        case _:
            fail(f"docker stand-in: unexpected call {args}", 64)


def node_files(state: dict[str, Any], node: str) -> dict[str, str | None]:
    for cluster in state["clusters"].values():
        if node in cluster["nodes"]:
            return cluster["nodes"][node]
    fail(f"Error response from daemon: No such container: {node}")
    raise AssertionError


def kind(args: list[str], state: dict[str, Any], stdin: str | None) -> None:
    clusters = state["clusters"]
    match args:
        case ["get", "clusters"]:
            if not clusters:
                print("No kind clusters found.", file=sys.stderr)
            for name in clusters:
                print(name)
        case ["get", "nodes", "--name", name]:
            for node in clusters.get(name, {}).get("nodes", {}):
                print(node)
        case ["create", "cluster", "--name", name, "--image", image, "--config=-"]:
            if name in clusters:
                fail(f'ERROR: failed to create cluster: node(s) already exist for a cluster with the name "{name}"')
            config = yaml.safe_load(stdin or "")
            nodes = config.get("nodes") or [{"role": "control-plane"}]
            names = [f"{name}-control-plane" if n["role"] == "control-plane" else f"{name}-worker" for n in nodes]
            clusters[name] = {"image": image, "config": config, "nodes": {n: {} for n in names}}
        case ["delete", "cluster", "--name", name]:
            clusters.pop(name, None)
        case _:
            fail(f"kind stand-in: unexpected call {args}", 64)


def kubectl(args: list[str], state: dict[str, Any], stdin: str | None) -> None:
    match args:
        case ["--context", context, "apply", "-f", "-"]:
            if not context.startswith("kind-") or context.removeprefix("kind-") not in state["clusters"]:
                fail(f'error: context "{context}" does not exist')
            for obj in yaml.safe_load_all(stdin or ""):
                meta = obj["metadata"]
                state["objects"][f"{context}/{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"] = obj
        case _:
            fail(f"kubectl stand-in: unexpected call {args}", 64)


def reads_stdin(tool: str, args: list[str]) -> bool:
    return (tool == "docker" and args[:2] == ["exec", "-i"]) or "--config=-" in args or args[-2:] == ["-f", "-"]


def main() -> None:
    tool, args = sys.argv[1], sys.argv[2:]
    stdin = sys.stdin.read() if reads_stdin(tool, args) else None
    with LOG.open("a") as log:
        log.write(json.dumps({"tool": tool, "args": args, "stdin": stdin}) + "\n")
    state = load()
    try:
        {"docker": docker, "kind": kind, "kubectl": kubectl}[tool](args, state, stdin)
    finally:
        STATE.write_text(json.dumps(state))


if __name__ == "__main__":
    main()
