"""np-guard's network-config-analyzer (`nca`) runs from its own venv (it pins PyYAML and networkx
versions the dev venv does not have): the connectivity its analysis finds, as (source, destination,
connections) rows."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from offline.recording import PROJECT_ROOT

NCA = os.environ.get("SLM_NCA", str(PROJECT_ROOT / ".venv-nca" / "bin" / "nca"))
# Under the test command (which sets SLM_NCA) a missing analyzer is a failure, not a skip.
needs_nca = pytest.mark.skipif(
    "SLM_NCA" not in os.environ and not Path(NCA).exists(),
    reason=f"network-config-analyzer not installed at {NCA} (scripts/test.py installs it into .venv-nca)",
)

# `src => dst : conns` lines of `nca --connectivity -o txt_no_fw_rules`.
_LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conns>.+)$")
_GROUP = re.compile(r"\{([^}]*)\}")
_KEY = re.compile(r"(?:^|,)(protocols|src_ports|dst_ports|methods|paths|hosts):")


@dataclass(frozen=True)
class Connection:
    source: str  # `ns/name[Kind]` or an address range `a.b.c.d-e.f.g.h`
    destination: str
    # nca's text: `All connections`, `No connections`, `{protocols:TCP,dst_ports:8000}` groups, or
    # `All but {...}` (the complement, when that is shorter).
    connections: str

    def permits(self, protocol: str, port: int) -> bool:
        text = self.connections.strip()
        if text == "All connections":
            return True
        if text == "No connections":
            return False
        complement = text.startswith("All but ")
        matched = any(_group_matches(g, protocol, port) for g in _GROUP.findall(text))
        return matched != complement


def _group_matches(group: str, protocol: str, port: int) -> bool:
    """Whether one `{key:value,...}` group holds the protocol and destination port (an absent key
    holds everything)."""
    keys = list(_KEY.finditer(group))
    values = {
        m[1]: group[m.end() : keys[i + 1].start() if i + 1 < len(keys) else len(group)] for i, m in enumerate(keys)
    }
    protocols = {p.strip() for p in values.get("protocols", protocol).split(",")}
    ports = values.get("dst_ports")
    return protocol in protocols and (ports is None or any(_in_range(port, r) for r in ports.split(",")))


def _in_range(port: int, text: str) -> bool:
    low, _, high = text.strip().partition("-")
    return int(low) <= port <= int(high or low)


def covers(endpoint: str, ip: str) -> bool:
    """Whether nca's endpoint holds the address: an IPv4 range `a-b`, a CIDR or one address (nca prints
    IPv6 only with --print_ipv6); a pod (`ns/name[Kind]`) holds none."""
    if "[" in endpoint:
        return False
    low, _, high = endpoint.partition("-")
    try:
        if high:
            return ipaddress.IPv4Address(low) <= ipaddress.IPv4Address(ip) <= ipaddress.IPv4Address(high)
        return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(endpoint, strict=False)
    except ValueError:
        return False


def connectivity(folder: Path) -> list[Connection]:
    """The connectivity map of every pod, namespace and NetworkPolicy in `folder`."""
    result = subprocess.run(
        [
            NCA,
            "--connectivity",
            str(folder),
            "--pod_list",
            str(folder),
            "--ns_list",
            str(folder),
            "-o",
            "txt_no_fw_rules",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [m for line in result.stdout.splitlines() if (m := _LINE.match(line.strip()))]
    assert rows, f"nca reported no connectivity:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return [Connection(m["src"], m["dst"], m["conns"]) for m in rows]
