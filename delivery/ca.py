"""Fetch a stack's own CA certificate (the gateway's issuer when no `gateway.domain` is set).

Kubernetes targets: the `slm-serving-ca` secret, read with kubectl and the stack's `kubeconfig` output.
VM: Caddy's local root, read over SSH with the `vmSshPrivateKey`, `vmAdminUser` and `vmAddress` outputs.
The SSH host key is accepted on first use (the VM is new); the certificate then pins TLS from there on.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Kubernetes object names, not secret values.
CA_SECRET_NAMESPACE = "slm-serving"  # noqa: S105
CA_SECRET_NAME = "slm-serving-ca"  # noqa: S105
VM_CA_PATH = "/var/lib/slm-serving/caddy/data/caddy/pki/authorities/local/root.crt"


class CaFetchError(Exception):
    pass


def kubectl_command(kubeconfig: Path) -> list[str]:
    return [
        "kubectl",
        "--kubeconfig",
        str(kubeconfig),
        "-n",
        CA_SECRET_NAMESPACE,
        "get",
        "secret",
        CA_SECRET_NAME,
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]


def ssh_command(key: Path, user: str, address: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(key),
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "BatchMode=yes",
        f"{user}@{address}",
        "sudo",
        "cat",
        VM_CA_PATH,
    ]


def _run(command: list[str]) -> str:
    tool = shutil.which(command[0])
    if tool is None:
        raise CaFetchError(f"{command[0]} is not on PATH: it is needed to read the stack's CA")
    result = subprocess.run([tool, *command[1:]], capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if result.returncode != 0:
        raise CaFetchError(f"{command[0]} failed ({result.returncode}): {' '.join(result.stderr.split())[:300]}")
    return result.stdout


def fetch_ca(outputs: Mapping[str, Any], dest: Path) -> Path:
    """Write the stack's CA certificate to `dest` and return it."""
    with tempfile.TemporaryDirectory() as tmp:
        if outputs.get("kubeconfig"):
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(str(outputs["kubeconfig"]))
            kubeconfig.chmod(0o600)
            pem = base64.b64decode(_run(kubectl_command(kubeconfig))).decode()
        elif outputs.get("vmSshPrivateKey") and outputs.get("vmAddress"):
            key = Path(tmp) / "key"
            key.touch(mode=0o600)
            key.write_text(str(outputs["vmSshPrivateKey"]))
            pem = _run(ssh_command(key, str(outputs.get("vmAdminUser") or "azureuser"), str(outputs["vmAddress"])))
        else:
            raise CaFetchError("the stack exports neither `kubeconfig` nor `vmSshPrivateKey`: pass --ca-file")
    if "BEGIN CERTIFICATE" not in pem:
        raise CaFetchError("what was read is not a PEM certificate")
    dest.write_text(pem)
    dest.chmod(0o644)
    return dest
