"""The VM's TLS proxy (Caddy): the only public listener. Every backend route needs
`Authorization: Bearer <one of the keys>` and reaches only the paths its description lists; Open
WebUI (the root path, or ui.<domain>) has its own sign-in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra import images
from infra.backends import registry
from infra.backends.description import Backend, Route
from infra.config import StackSettings
from infra.conventions import WORKLOAD_UID
from infra.vm.secrets import API_KEYS_CADDY_FILE, DATA_DIR, PROXY_FOLDERS, UPSTREAM_AUTH_CADDY_FILE, host_path
from infra.vm.services import hardened

CADDY_IMAGE = images.CADDY
PROXY_PORT = 8443  # in the container; published as 443
PROXY_HEALTH_PORT = 8081
PROXY_METRICS_PORT = 9180  # on the Compose network only (not published); Prometheus job slm-gateway
WEBUI_PORT = 8080
# Caddy labels its metrics by server, not by route: each backend gets its own server on loopback,
# named after the backend, which the public server hands the request to after the key check. Ports
# follow registry order, so adding an engine never moves another's.
FIRST_BACKEND_SERVER_PORT = 9101
UNAUTHORIZED_BODY = (
    '{"error": {"message": "Missing or invalid API key: send Authorization: Bearer <key>", '
    '"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}'
)
NOT_FOUND_BODY = (
    '{"error": {"message": "Not found: this backend serves only its API paths", '
    '"type": "invalid_request_error", "param": null, "code": "not_found"}}'
)


def backend_server_port(backend: str) -> int:
    return FIRST_BACKEND_SERVER_PORT + registry.names().index(backend)


def _route_body(route: Route) -> list[str]:
    """A backend's handler: 401 without a valid key; its API paths on to the backend's own server,
    streaming; any other path 404."""
    matcher = " ".join(p for path in route.paths for p in (path, f"{path}/*"))
    return [
        "handle @no_api_key {",
        '\theader WWW-Authenticate "Bearer"',
        "\theader Content-Type application/json",
        f"\trespond `{UNAUTHORIZED_BODY}` 401",
        "}",
        f"@api path {matcher}",
        "handle @api {",
        f"\treverse_proxy 127.0.0.1:{backend_server_port(route.backend)} {{",
        "\t\t# Server-sent events: pass every chunk on at once.",
        "\t\tflush_interval -1",
        "\t}",
        "}",
        "handle {",
        "\theader Content-Type application/json",
        f"\trespond `{NOT_FOUND_BODY}` 404",
        "}",
    ]


def _backend_server(backend: Backend) -> list[str]:
    """The backend's own server on loopback: proxies to the backend with the upstream key. Its requests
    carry server="<backend>" in Caddy's metrics."""
    return [
        f"http://:{backend_server_port(backend.name)} {{",
        "\tbind 127.0.0.1",
        f"\treverse_proxy {backend.name}:{backend.port} {{",
        "\t\tflush_interval -1",
        f"\t\timport /run/secrets/{caddy_secret(UPSTREAM_AUTH_CADDY_FILE)}",
        "\t}",
        "}",
        "",
    ]


def caddy_secret(file: str) -> str:
    return file.replace(".", "_")


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    return [("\t" * depth + line) if line else line for line in lines]


def caddyfile(settings: StackSettings, backends: Sequence[Backend], public_host: str | None = None) -> str:
    gateway = settings.gateway
    global_options = [
        "admin off",
        "http_port 8080",  # unpublished: HTTP is not served; ACME uses TLS-ALPN on 443
        f"https_port {PROXY_PORT}",
        "skip_install_trust",  # unprivileged: the internal CA is not added to the image's trust store
    ]
    if gateway.domain:
        global_options += [f"email {gateway.acme_email}", f"acme_ca {gateway.acme_server}"]
    else:
        # Clients use the VM's DNS name (its certificate is issued on demand for the name they ask
        # for); a client that connects by IP sends no SNI and gets the DNS name's certificate.
        global_options.append(f"default_sni {public_host or 'slm-serving'}")
    route_list = [b.route for b in backends]
    # Request metrics (Caddy 2.10: the `metrics` option), per backend through the servers' names;
    # the backend servers trust the public one's X-Forwarded-For (the client's address).
    global_options.append("metrics")
    for route in route_list:
        global_options += [
            f"servers 127.0.0.1:{backend_server_port(route.backend)} {{",
            f"\tname {route.backend}",
            "\ttrusted_proxies static 127.0.0.1/32",
            "}",
        ]
    lines = ["{", *_indent(global_options), "}", ""]
    # ACME (when a domain is set) must reach this proxy on 443 for its TLS-ALPN challenge: the NSG
    # admits only allowedCidrs, so the CA's validation servers must be among them (or use a DNS-01
    # capable build). Without a domain the certificate comes from Caddy's internal CA (self-signed).
    tls = [f"tls {gateway.acme_email}"] if gateway.domain else ["tls internal {", "\ton_demand", "}"]
    auth = [f"import /run/secrets/{caddy_secret(API_KEYS_CADDY_FILE)}"]
    ui = ["reverse_proxy webui:" + str(WEBUI_PORT)]
    if gateway.routing == "host" and gateway.domain:
        for route in route_list:
            lines += [f"{route.prefix}.{gateway.domain} {{", *_indent([*tls, *auth, *_route_body(route)]), "}", ""]
        if settings.web_ui.enabled:
            lines += [f"ui.{gateway.domain} {{", *_indent([*tls, *ui]), "}", ""]
    else:
        body = [*tls, *auth]
        for route in route_list:
            body += [f"handle_path /{route.prefix}/* {{", *_indent(_route_body(route)), "}"]
        # Open WebUI serves from the root path only: it takes whatever no backend prefix matches.
        body += ["handle {", *_indent(ui if settings.web_ui.enabled else ["respond 404"]), "}"]
        lines += [f"{gateway.domain or f':{PROXY_PORT}'} {{", *_indent(body), "}", ""]
    for backend in backends:
        lines += _backend_server(backend)
    # Scraped by Prometheus over the Compose network (job slm-gateway); the port is not published.
    lines += [f"http://:{PROXY_METRICS_PORT} {{", "\tmetrics /metrics", "}", ""]
    lines += [f"http://127.0.0.1:{PROXY_HEALTH_PORT} {{", "\tbind 127.0.0.1", "\trespond /healthz 200", "}"]
    return "\n".join(lines) + "\n"


def add_proxy(
    document: dict[str, Any], settings: StackSettings, backends: Sequence[Backend], public_host: str | None
) -> None:
    document["configs"]["caddyfile"] = {"content": caddyfile(settings, backends, public_host)}
    for file in (API_KEYS_CADDY_FILE, UPSTREAM_AUTH_CADDY_FILE):
        document["secrets"][caddy_secret(file)] = {"file": host_path(file)}
    data, config = PROXY_FOLDERS
    document["services"]["proxy"] = hardened(
        {
            "image": CADDY_IMAGE,
            "user": f"{WORKLOAD_UID}:{WORKLOAD_UID}",
            # The image's caddy binary carries the file capability cap_net_bind_service=+ep; the kernel
            # refuses to exec it when that capability is outside the bounding set.
            "cap_add": ["NET_BIND_SERVICE"],
            # The only port on a public interface (the NSG admits allowedCidrs on 443).
            "ports": [f"443:{PROXY_PORT}"],
            "configs": [{"source": "caddyfile", "target": "/etc/caddy/Caddyfile"}],
            "secrets": [caddy_secret(API_KEYS_CADDY_FILE), caddy_secret(UPSTREAM_AUTH_CADDY_FILE)],
            "volumes": [f"{DATA_DIR}/{data}:/data", f"{DATA_DIR}/{config}:/config"],
            "tmpfs": ["/tmp"],
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "-O-", f"http://127.0.0.1:{PROXY_HEALTH_PORT}/healthz"],
                "interval": "30s",
                "timeout": "5s",
                "retries": 3,
            },
            "restart": "unless-stopped",
        }
    )
