"""Where the VM keeps what its services read: the secrets the boot script fetches from Key Vault into
tmpfs, the data-disk folders, and the Compose secrets that mount them. Secrets never appear in the
Compose file or the custom data: only their Key Vault names and file paths do."""

from __future__ import annotations

from collections.abc import Sequence

from infra.azure.keyvault import (
    GRAFANA_PASSWORD_SECRET,
    HF_TOKEN_SECRET,
    WEBUI_SECRET_KEY_SECRET,
    api_key_secret,
    webhook_secret,
)
from infra.backends.description import Backend
from infra.config import StackSettings
from infra.conventions import API_KEYS_FILE, HF_TOKEN_FILE, WORKLOAD_UID

SECRETS_DIR = "/run/slm-serving/secrets"
DATA_DIR = "/var/lib/slm-serving"
SECRETS_GROUP = str(WORKLOAD_UID)  # the group that may read the tmpfs secrets
# Where Compose mounts a secret in a container: /run/secrets/<name> (Paths.secrets on the VM).
MOUNTED_SECRETS = "/run/secrets"
# Files the VM's slm-fetch-secrets writes into SECRETS_DIR.
HOST_FILES = {API_KEYS_FILE: "api_keys", HF_TOKEN_FILE: "hf_token"}
GRAFANA_PASSWORD_FILE = "grafana_admin_password"  # noqa: S105 (a file name)
WEBUI_SECRET_KEY_FILE = "webui_secret_key"  # noqa: S105 (a file name)
# Generated from api_keys at boot (cloud_init.py): a Caddy matcher for requests without a valid key,
# and the header the proxy sends upstream (the first key, which every backend accepts).
API_KEYS_CADDY_FILE = "api_keys.caddy"
UPSTREAM_AUTH_CADDY_FILE = "upstream_auth.caddy"
# Folders on the data disk that are not a backend's volume, with their owners.
PROXY_FOLDERS = ("caddy/data", "caddy/config")
WEBUI_FOLDER = "webui"


def vm_generated_secrets(settings: StackSettings) -> tuple[str, ...]:
    """Key Vault secrets the stack generates for the VM: Grafana's password, one API key per client,
    and Open WebUI's session key when it runs."""
    names = [GRAFANA_PASSWORD_SECRET, *(api_key_secret(c) for c in settings.gateway.api_key_clients)]
    if settings.web_ui.enabled:
        names.append(WEBUI_SECRET_KEY_SECRET)
    return tuple(names)


def webhook_file(receiver: str) -> str:
    """The tmpfs file holding one alert receiver's webhook URL."""
    return f"webhook_{receiver}"


def webhook_receivers(settings: StackSettings) -> tuple[str, ...]:
    """The receivers that have a webhook URL (each one a Key Vault secret and a file on the VM)."""
    return tuple(r.name for r in settings.monitoring.receivers if r.webhook_url is not None)


def vm_secret_files(settings: StackSettings) -> tuple[tuple[str, str], ...]:
    """Key Vault secret name -> file in the VM's tmpfs; the API keys all go into one file, a line each."""
    files = [
        (HF_TOKEN_SECRET, HOST_FILES[HF_TOKEN_FILE]),
        (GRAFANA_PASSWORD_SECRET, GRAFANA_PASSWORD_FILE),
        *((api_key_secret(c), HOST_FILES[API_KEYS_FILE]) for c in settings.gateway.api_key_clients),
        *((webhook_secret(r), webhook_file(r)) for r in webhook_receivers(settings)),
    ]
    if settings.web_ui.enabled:
        files.append((WEBUI_SECRET_KEY_SECRET, WEBUI_SECRET_KEY_FILE))
    return tuple(files)


def data_folders(backends: Sequence[Backend], web_ui: bool) -> tuple[tuple[str, int], ...]:
    """Data-disk folders cloud-init creates, with their owners: every backend volume, the proxy's and
    Open WebUI's (every service runs as the workload user)."""
    folders = {v.claim: WORKLOAD_UID for b in backends for v in b.volumes}
    folders.update(dict.fromkeys(PROXY_FOLDERS, WORKLOAD_UID))
    if web_ui:
        folders[WEBUI_FOLDER] = WORKLOAD_UID
    return tuple(folders.items())


def host_path(file: str) -> str:
    return f"{SECRETS_DIR}/{HOST_FILES.get(file, file)}"
