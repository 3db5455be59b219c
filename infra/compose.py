"""The Compose project the VM runs. The serving layer fills it with the backends; until then it holds
one status service so the boot path (disk, secrets, runtime, unit) is exercised end to end."""

import yaml

from infra.config import StackSettings

# Pinned by version; the VM pulls it from Docker Hub at boot.
STATUS_IMAGE = "busybox:1.37.0"


def compose_project(settings: StackSettings) -> str:
    services = {
        "status": {
            "image": STATUS_IMAGE,
            "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "user": "65534:65534",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            # Loopback only: nothing but the TLS proxy (serving layer) listens publicly.
            "ports": ["127.0.0.1:8080:8080"],
            "configs": [{"source": "status", "target": "/www/index.html"}],
            "restart": "unless-stopped",
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"],
                "interval": "30s",
            },
        }
    }
    document = {
        "name": "slm-serving",
        "services": services,
        "configs": {"status": {"content": f"slm-serving {settings.environment}: no backend enabled yet\n"}},
    }
    return yaml.safe_dump(document, sort_keys=False)
