"""How Open WebUI runs on every target: as the workload user, with a read-only root filesystem and
only these paths writable (Kubernetes emptyDirs and a volume, Compose tmpfs mounts and a data-disk
folder).

What the image (v0.6.36) writes, and where it goes instead:
- its database, uploads and caches: DATA_DIR, the persistent volume;
- at start, config.py empties STATIC_DIR and copies the frontend's static files into it: STATIC_DIR
  is moved to a writable mount, filled first with the image's own static files (fonts, styles);
- backend/start.sh writes `.webui_secret_key` when no WEBUI_SECRET_KEY is set and tees its log to
  `server.log` in the app folder: both targets set the key and start uvicorn themselves instead.
"""

from __future__ import annotations

DATA_DIR = "/app/backend/data"
STATIC_DIR = "/app/backend/static"
TMP_DIR = "/tmp"  # noqa: S108 (a private mount per container, HOME points here)
# The image's own static folder (read-only): copied into STATIC_DIR before the app starts.
IMAGE_STATIC_DIR = "/app/backend/open_webui/static"
APP_DIR = "/app/backend"

ENV = {"HOME": TMP_DIR, "DATA_DIR": DATA_DIR, "STATIC_DIR": STATIC_DIR}


def serve() -> str:
    """The shell lines that start the app once its settings are exported (what start.sh does for
    us, without its writes into the app folder)."""
    return (
        f"cp -R {IMAGE_STATIC_DIR}/. {STATIC_DIR}/\n"
        f"cd {APP_DIR}\n"
        "exec uvicorn open_webui.main:app --host 0.0.0.0 --port \"$PORT\" --forwarded-allow-ips '*'\n"
    )
