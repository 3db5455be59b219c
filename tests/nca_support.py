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


@dataclass(frozen=True)
class Connection:
    source: str  # `ns/name[Kind]` or an address range `a.b.c.d-e.f.g.h`
    destination: str
    connections: str  # nca's text: `All connections` or `{protocols:TCP,dst_ports:8000}` groups

    def permits(self, protocol: str, port: int) -> bool:
        if self.connections.strip() == "All connections":
            return True
        for group in _GROUP.findall(self.connections):
            protocols, _, ports = group.partition(",dst_ports:")
            names = {p.strip() for p in protocols.removeprefix("protocols:").split(",")}
            if protocol not in names:
                continue
            if not ports or any(_in_range(port, r) for r in ports.split(",")):
                return True
        return False


def _in_range(port: int, text: str) -> bool:
    low, _, high = text.strip().partition("-")
    return int(low) <= port <= int(high or low)


def covers(endpoint: str, ip: str) -> bool:
    """Whether nca's endpoint (an IPv4 address range; nca prints IPv6 only with --print_ipv6) holds the address."""
    if "-" not in endpoint or "/" in endpoint or "[" in endpoint:
        return False
    low, _, high = endpoint.partition("-")
    try:
        return ipaddress.IPv4Address(low) <= ipaddress.IPv4Address(ip) <= ipaddress.IPv4Address(high)
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
