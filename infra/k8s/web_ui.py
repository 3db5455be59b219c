"""Open WebUI (optional, off by default): a chat UI pointed at every enabled backend's in-cluster
OpenAI URL, with its own sign-in on. It reads its settings from the environment only, so a shell step
exports the keys from mounted files at start; no key is ever in the pod spec. It runs as on the VM:
the workload user, a read-only root filesystem, writable only its data volume and emptyDirs
(infra/open_webui.py says what it writes where)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import images, open_webui
from infra.k8s.api_keys import BACKEND_KEYS_FILE
from infra.k8s.pods import WORKLOAD_UID, restricted_container, restricted_pod, scanner_annotations
from infra.k8s.volumes import model_claim

WEB_UI_NAME = "open-webui"
WEB_UI_PORT = 8080
SECRETS_MOUNT = "/var/run/secrets/slm"
DATA_MOUNT = open_webui.DATA_DIR


@dataclass(frozen=True)
class WebUiArgs:
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    labels: dict[str, str]
    # In-cluster OpenAI base URLs of the enabled backends.
    backend_urls: Sequence[str]
    # Secret with `api-keys` (the backends' keys, one per line); the UI uses the first.
    api_keys_secret: pulumi.Input[str]
    storage_class: str | None
    access_mode: str


def start_script(backend_urls: Sequence[str]) -> str:
    keys = f"{SECRETS_MOUNT}/{BACKEND_KEYS_FILE}"
    repeated = ";".join("$key" for _ in backend_urls)
    return (
        "set -eu\n"
        f"key=$(grep -v '^#' {keys} | head -n 1)\n"
        f'export OPENAI_API_KEYS="{repeated}"\n'
        f'export WEBUI_SECRET_KEY="$(cat {SECRETS_MOUNT}/session-key)"\n' + open_webui.serve()
    )


class WebUi(pulumi.ComponentResource):
    labels: dict[str, str]

    def __init__(self, name: str, args: WebUiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:WebUi", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        self.labels = {"app.kubernetes.io/name": WEB_UI_NAME, "app.kubernetes.io/component": "web-ui"}
        labels = {**args.labels, **self.labels}
        # Signs the UI's session cookies; stable across restarts so users stay signed in.
        session_key = random.RandomPassword(
            f"{name}-session-key", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        secret = k8s.core.v1.Secret(
            f"{name}-session-key",
            metadata={"name": "open-webui-session-key", "namespace": args.namespace, "labels": labels},
            type="Opaque",
            string_data={"session-key": session_key.result},
            opts=child,
        )
        data = model_claim(
            f"{name}-data",
            claim="open-webui-data",
            size_gb=4,
            namespace=args.namespace,
            storage_class=args.storage_class,
            access_mode=args.access_mode,
            labels=labels,
            opts=child,
        )
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                "name": WEB_UI_NAME,
                "namespace": args.namespace,
                "labels": labels,
                "annotations": scanner_annotations(),
            },
            spec={
                "replicas": 1,
                # One writer of its SQLite database at a time.
                "strategy": {"type": "Recreate"},
                "selector": {"match_labels": self.labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automount_service_account_token": False,
                        "enable_service_links": False,
                        "security_context": restricted_pod(WORKLOAD_UID),
                        "containers": [
                            {
                                "name": WEB_UI_NAME,
                                "image": images.OPEN_WEBUI,
                                "image_pull_policy": "IfNotPresent",
                                "command": ["/bin/bash", "-c", start_script(args.backend_urls)],
                                "env": [
                                    *({"name": k, "value": v} for k, v in open_webui.ENV.items()),
                                    {"name": "PORT", "value": str(WEB_UI_PORT)},
                                    {"name": "WEBUI_AUTH", "value": "True"},
                                    {"name": "ENABLE_SIGNUP", "value": "False"},
                                    {"name": "ENABLE_OLLAMA_API", "value": "False"},
                                    # Settings come from here on every start, not from the first start's database.
                                    {"name": "ENABLE_PERSISTENT_CONFIG", "value": "False"},
                                    {"name": "OPENAI_API_BASE_URLS", "value": ";".join(args.backend_urls)},
                                    {"name": "SCARF_NO_ANALYTICS", "value": "true"},
                                    {"name": "DO_NOT_TRACK", "value": "true"},
                                    {"name": "ANONYMIZED_TELEMETRY", "value": "false"},
                                ],
                                "ports": [{"name": "http", "container_port": WEB_UI_PORT, "protocol": "TCP"}],
                                "volume_mounts": [
                                    {"name": "data", "mount_path": DATA_MOUNT},
                                    {"name": "secrets", "mount_path": SECRETS_MOUNT, "read_only": True},
                                    {"name": "tmp", "mount_path": open_webui.TMP_DIR},
                                    {"name": "static", "mount_path": open_webui.STATIC_DIR},
                                ],
                                "resources": {
                                    "requests": {"cpu": "250m", "memory": "1Gi"},
                                    "limits": {"cpu": "2", "memory": "2Gi"},
                                },
                                "startup_probe": {
                                    "http_get": {"path": "/health", "port": "http"},
                                    "period_seconds": 10,
                                    "failure_threshold": 60,
                                },
                                "readiness_probe": {
                                    "http_get": {"path": "/health", "port": "http"},
                                    "period_seconds": 10,
                                },
                                "liveness_probe": {
                                    "http_get": {"path": "/health", "port": "http"},
                                    "period_seconds": 20,
                                },
                                "security_context": restricted_container(),
                            }
                        ],
                        "volumes": [
                            {
                                "name": "data",
                                "persistent_volume_claim": {
                                    "claim_name": data.metadata.apply(lambda m: m.name or "open-webui-data")
                                },
                            },
                            {
                                "name": "secrets",
                                "projected": {
                                    "default_mode": 0o400,
                                    "sources": [
                                        {
                                            "secret": {
                                                "name": args.api_keys_secret,
                                                "items": [{"key": BACKEND_KEYS_FILE, "path": BACKEND_KEYS_FILE}],
                                            }
                                        },
                                        {
                                            "secret": {
                                                "name": secret.metadata.apply(
                                                    lambda m: m.name or "open-webui-session-key"
                                                ),
                                                "items": [{"key": "session-key", "path": "session-key"}],
                                            }
                                        },
                                    ],
                                },
                            },
                            {"name": "tmp", "empty_dir": {}},
                            # The frontend's static files, copied in at every start.
                            {"name": "static", "empty_dir": {"size_limit": "256Mi"}},
                        ],
                    },
                },
            },
            opts=child,
        )
        k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": WEB_UI_NAME, "namespace": args.namespace, "labels": labels},
            spec={
                "type": "ClusterIP",
                "selector": self.labels,
                "ports": [{"name": "http", "port": WEB_UI_PORT, "target_port": "http", "protocol": "TCP"}],
            },
            opts=child,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": WEB_UI_NAME, "namespace": args.namespace, "labels": labels},
            spec={"max_unavailable": 1, "selector": {"match_labels": self.labels}},
            opts=child,
        )
        self.register_outputs({})
