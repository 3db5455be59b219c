"""What must be in place before a command reaches Pulumi: the CLI, a state backend, Azure credentials.

Each check returns None or one line naming exactly what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

AZURE_IDENTITY_VARS = ("ARM_CLIENT_ID", "ARM_TENANT_ID", "ARM_SUBSCRIPTION_ID")

Which = Callable[[str], str | None]


def pulumi_cli_problem(which: Which | None = None) -> str | None:
    if (which or shutil.which)("pulumi") is None:
        return "the Pulumi CLI is not on PATH; install it (https://www.pulumi.com/docs/install/) or use pulumi/actions"
    return None


def backend_problem(env: Mapping[str, str], home: Path | None = None) -> str | None:
    """A Pulumi backend to keep state in: Pulumi Cloud (token), a DIY URL, or an earlier `pulumi login`."""
    if env.get("PULUMI_ACCESS_TOKEN") or env.get("PULUMI_BACKEND_URL"):
        return None
    pulumi_home = Path(env.get("PULUMI_HOME") or (home or Path.home()) / ".pulumi")
    credentials = pulumi_home / "credentials.json"
    try:
        if json.loads(credentials.read_text()).get("current"):
            return None
    except (OSError, ValueError, AttributeError):
        pass
    return (
        "no Pulumi backend credentials: set PULUMI_ACCESS_TOKEN or PULUMI_BACKEND_URL, "
        f"or run `pulumi login` ({credentials} has no current login)"
    )


def _az_logged_in(which: Which) -> bool:
    az = which("az")
    if az is None:
        return False
    try:
        result = subprocess.run(  # noqa: S603 (a fixed command, resolved on PATH)
            [az, "account", "show", "--output", "none"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def azure_problem(
    env: Mapping[str, str], which: Which | None = None, az_logged_in: Callable[[], bool] | None = None
) -> str | None:
    """Azure credentials the azure-native provider can use: OIDC (ARM_* with ARM_USE_OIDC) or the Azure CLI."""
    which = which or shutil.which
    missing = [name for name in AZURE_IDENTITY_VARS if not env.get(name)]
    use_oidc = env.get("ARM_USE_OIDC", "").lower() == "true"
    if not missing and use_oidc:
        return None
    if (az_logged_in or (lambda: _az_logged_in(which)))():
        return None
    wanted = f"{', '.join(missing)} (with ARM_USE_OIDC=true)" if missing else "ARM_USE_OIDC=true"
    az = "`az account show` fails" if which("az") else "the Azure CLI (az) is not installed"
    return f"no Azure credentials: {wanted} not set and {az}"


def environ() -> Mapping[str, str]:
    return dict(os.environ)
