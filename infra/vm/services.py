"""What every Compose service of ours shares."""

from __future__ import annotations

from typing import Any


def hardened(service: dict[str, Any]) -> dict[str, Any]:
    """A read-only root filesystem, no capabilities, no privilege escalation (exceptions say why)."""
    return {
        **service,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
    }
