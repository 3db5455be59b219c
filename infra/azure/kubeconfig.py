"""Kubeconfig handling for AKS with Entra ID (local accounts off)."""

import base64

import yaml


def for_azure_cli(kubeconfig_b64: str) -> str:
    """Decode AKS's user kubeconfig and make kubelogin reuse the caller's `az login` (or OIDC) session.

    AKS hands out a kubelogin exec config with the interactive device-code flow, which hangs in CI.
    """
    config = yaml.safe_load(base64.b64decode(kubeconfig_b64).decode())
    for user in config.get("users") or []:
        exec_ = (user.get("user") or {}).get("exec")
        if not exec_ or exec_.get("command") != "kubelogin":
            continue
        args = list(exec_.get("args") or [])
        if "--login" in args:
            args[args.index("--login") + 1] = "azurecli"
        else:
            args += ["--login", "azurecli"]
        exec_["args"] = args
    return yaml.safe_dump(config, sort_keys=False)
