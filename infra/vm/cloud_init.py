"""cloud-config for the serving VM: container runtime (+ NVIDIA toolkit on GPU sizes), the model-cache
disk, the Hugging Face token fetched from Key Vault with the VM's managed identity into tmpfs, and a
systemd unit that runs the Compose project.

A pure function of its inputs, so the rendered document can be validated against cloud-init's schema.
"""

from dataclasses import dataclass

import yaml

from infra.conventions import API_KEYS_FILE
from infra.vm.secrets import API_KEYS_CADDY_FILE, DATA_DIR, HOST_FILES, SECRETS_DIR, UPSTREAM_AUTH_CADDY_FILE

APP_DIR = "/opt/slm-serving"
DATA_DISK = "/dev/disk/azure/scsi1/lun0"
SERVICE = "slm-serving.service"


@dataclass(frozen=True)
class CloudInitArgs:
    compose_yaml: str
    gpu: bool
    key_vault_uri: str
    # Key Vault secret name -> file name under SECRETS_DIR; several secrets may share a file (a line each).
    secrets: tuple[tuple[str, str], ...]
    registry_login_server: str
    # Data-disk folders and their owners (infra/vm/secrets.data_folders).
    data_folders: tuple[tuple[str, int], ...] = ()


_FETCH_SECRETS = """#!/bin/sh
# Fetch secrets from Key Vault with the VM's managed identity into tmpfs; never written to disk.
set -eu
umask 077
mkdir -p {secrets_dir}
imds='http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01'
token=$(curl -fsS -H Metadata:true "$imds&resource=https%3A%2F%2Fvault.azure.net" | jq -r .access_token)
get() {{
  # One secret's value on stdout; a failed request or a missing value stops the script.
  body=$(curl -fsS -H "Authorization: Bearer $token" "{vault_uri}secrets/$1?api-version=7.4")
  printf '%s' "$body" | jq -ej .value
}}
publish() {{
  # Readable by the containers' shared group (10001), nobody else.
  chgrp 10001 "$1.tmp" && chmod 0440 "$1.tmp"
  mv "$1.tmp" "$1"
}}
fetch() {{
  # fetch FILE NAME...: one secret as is, or several one per line.
  file="{secrets_dir}/$1"
  shift
  : > "$file.tmp"
  if [ $# -eq 1 ]; then
    get "$1" > "$file.tmp"
  else
    for name in "$@"; do
      get "$name" >> "$file.tmp"
      echo >> "$file.tmp"
    done
  fi
  publish "$file"
}}
{fetches}
"""

# The TLS proxy's key check, generated from the fetched API keys (one per line): matchers for
# requests with (@api_key) and without (@no_api_key) a valid key, and the key the proxy sends
# upstream (the first; every backend accepts it). The scheme is case-insensitive (RFC 9110, as the
# ONNX server reads it); the key is not. The keys are generated letters and digits; anything else is
# refused, never written into Caddy's configuration ('.' and '+' are escaped for the regexp).
_CADDY_KEYS = """
keys="{secrets_dir}/{api_keys}"
matcher="{secrets_dir}/{matcher}"
upstream="{secrets_dir}/{upstream}"
first=''
alternatives=''
while IFS= read -r key || [ -n "$key" ]; do
  [ -n "$key" ] || continue
  case "$key" in
    *[!A-Za-z0-9._~+/=-]*) echo "slm-fetch-secrets: an API key has characters Caddy would misread" >&2; exit 1 ;;
  esac
  [ -n "$first" ] || first=$key
  alternatives="$alternatives${{alternatives:+|}}$(printf '%s' "$key" | sed 's/[.+]/\\\\&/g')"
done < "$keys"
[ -n "$first" ] || {{ echo "slm-fetch-secrets: $keys holds no API key" >&2; exit 1; }}
credentials="^(?i:bearer) +($alternatives)"'$'
{{
  printf '@api_key header_regexp Authorization `%s`\\n' "$credentials"
  printf '@no_api_key not header_regexp Authorization `%s`\\n' "$credentials"
}} > "$matcher.tmp"
printf 'header_up Authorization "Bearer %s"\\n' "$first" > "$upstream.tmp"
publish "$matcher"
publish "$upstream"
"""

# Docker logs in to ACR with the VM's managed identity: an Entra token exchanged for an ACR
# refresh token (no admin user, no stored password).
_REGISTRY_LOGIN = """#!/bin/sh
set -eu
imds='http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01'
aad=$(curl -fsS -H Metadata:true "$imds&resource=https%3A%2F%2Fmanagement.azure.com%2F" | jq -r .access_token)
refresh=$(curl -fsS -X POST "https://{registry}/oauth2/exchange" \\
  --data-urlencode grant_type=access_token --data-urlencode service={registry} \\
  --data-urlencode "access_token=$aad" | jq -r .refresh_token)
printf '%s' "$refresh" | docker login {registry} --username 00000000-0000-0000-0000-000000000000 --password-stdin
"""

# NVIDIA's documented apt repository for the container toolkit; the key is verified by apt.
_INSTALL_NVIDIA_TOOLKIT = """#!/bin/sh
set -eu
keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor --yes -o "$keyring"
curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \\
  | sed "s#deb https://#deb [signed-by=$keyring] https://#g" > /etc/apt/sources.list.d/nvidia-container-toolkit.list
apt-get update
apt-get install -y --no-install-recommends nvidia-container-toolkit
nvidia-ctk runtime configure --runtime=docker
systemctl restart docker
"""

_UNIT = f"""[Unit]
Description=slm-serving Compose project
Requires=docker.service
After=docker.service network-online.target
Wants=network-online.target
RequiresMountsFor={DATA_DIR}

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory={APP_DIR}
ExecStartPre=/usr/local/sbin/slm-fetch-secrets
ExecStartPre=/usr/local/sbin/slm-registry-login
ExecStart=/usr/bin/docker compose -f {APP_DIR}/compose.yaml up -d --remove-orphans --wait
ExecStop=/usr/bin/docker compose -f {APP_DIR}/compose.yaml down
TimeoutStartSec=3600

[Install]
WantedBy=multi-user.target
"""

_DOCKER_DAEMON = '{\n  "log-driver": "local",\n  "live-restore": true,\n  "no-new-privileges": true\n}\n'


def fetch_secrets_script(args: CloudInitArgs) -> str:
    """slm-fetch-secrets: each file's secrets from Key Vault, then the proxy's key check."""
    files: dict[str, list[str]] = {}
    for name, file in args.secrets:
        files.setdefault(file, []).append(name)
    script = _FETCH_SECRETS.format(
        secrets_dir=SECRETS_DIR,
        vault_uri=args.key_vault_uri,
        fetches="\n".join(f"fetch {file} {' '.join(names)}" for file, names in files.items()),
    )
    if HOST_FILES[API_KEYS_FILE] in files:
        script += _CADDY_KEYS.format(
            secrets_dir=SECRETS_DIR,
            api_keys=HOST_FILES[API_KEYS_FILE],
            matcher=API_KEYS_CADDY_FILE,
            upstream=UPSTREAM_AUTH_CADDY_FILE,
        )
    return script


def cloud_config(args: CloudInitArgs) -> str:
    """The `#cloud-config` user data for the VM."""
    write_files = [
        {"path": f"{APP_DIR}/compose.yaml", "content": args.compose_yaml, "permissions": "0644"},
        {"path": "/etc/docker/daemon.json", "content": _DOCKER_DAEMON, "permissions": "0644"},
        {
            "path": "/usr/local/sbin/slm-fetch-secrets",
            "permissions": "0755",
            "content": fetch_secrets_script(args),
        },
        {
            "path": "/usr/local/sbin/slm-registry-login",
            "permissions": "0755",
            "content": _REGISTRY_LOGIN.format(registry=args.registry_login_server),
        },
        {"path": f"/etc/systemd/system/{SERVICE}", "content": _UNIT, "permissions": "0644"},
    ]
    runcmd: list[list[str]] = []
    if args.gpu:
        write_files.append(
            {
                "path": "/usr/local/sbin/slm-install-nvidia-toolkit",
                "content": _INSTALL_NVIDIA_TOOLKIT,
                "permissions": "0755",
            }
        )
        runcmd.append(["/usr/local/sbin/slm-install-nvidia-toolkit"])
    # The services' folders on the data disk, owned by the user each runs as (the converter writes
    # models, the ONNX server reads them). The disk outlives the VM: what an older release wrote as
    # root (Open WebUI's database) is handed to that user too.
    for folder, uid in args.data_folders:
        runcmd += [
            ["install", "-d", "-o", str(uid), "-g", str(uid), "-m", "0755", f"{DATA_DIR}/{folder}"],
            ["chown", "-R", f"{uid}:{uid}", f"{DATA_DIR}/{folder}"],
        ]
    runcmd += [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", SERVICE],
    ]
    document = {
        "package_update": True,
        "packages": ["ca-certificates", "curl", "jq", "gnupg", "docker.io", "docker-compose-v2"],
        "disk_setup": {DATA_DISK: {"table_type": "gpt", "layout": True, "overwrite": False}},
        "fs_setup": [{"label": "slmdata", "filesystem": "ext4", "device": DATA_DISK, "partition": "auto"}],
        "mounts": [["LABEL=slmdata", DATA_DIR, "ext4", "defaults,nofail", "0", "2"]],
        "write_files": write_files,
        "runcmd": runcmd,
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)
