"""Names and numbers every target agrees on, defined once: the backend port, the uid our
containers run as, the secret files backends read, and the scrape jobs rules and dashboards select."""

# Every backend container listens here (vLLM's default; the others are told to).
BACKEND_PORT = 8000
# The uid (and gid) every container of ours runs as, on Kubernetes and on the VM.
WORKLOAD_UID = 10001
# Secret files a backend reads from its secrets folder: every client's API key, one per line; the
# Hugging Face token.
API_KEYS_FILE = "api-keys"
HF_TOKEN_FILE = "hf-token"  # noqa: S105 (a file name)
# Generated API keys: letters and digits only, so a key never needs quoting in a header, shell or file.
API_KEY_LENGTH = 48
# Scrape jobs of what is not a backend (a backend's job is in its description: slm-<name>).
JOBS = {
    "gateway": "slm-gateway",
    "dcgm": "slm-dcgm",
    "node": "slm-node",
}


def backend_job(backend: str) -> str:
    """The scrape job of a backend's own /metrics, the same on every target."""
    return f"slm-{backend}"


# OpenAI-style errors both entry points (Envoy Gateway, the VM's Caddy) send for a backend that is
# down or does not answer.
UNAVAILABLE_BODY = (
    '{"error": {"message": "The backend is not reachable: it may be starting or down", '
    '"type": "server_error", "param": null, "code": "backend_unavailable"}}'
)
TIMEOUT_BODY = (
    '{"error": {"message": "The backend did not answer in time", '
    '"type": "server_error", "param": null, "code": "backend_timeout"}}'
)
