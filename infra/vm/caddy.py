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
from infra.conventions import TIMEOUT_BODY, UNAVAILABLE_BODY, WORKLOAD_UID
from infra.vm.secrets import API_KEYS_CADDY_FILE, DATA_DIR, PROXY_FOLDERS, UPSTREAM_AUTH_CADDY_FILE, host_path
from infra.vm.services import hardened

CADDY_IMAGE = images.CADDY
PROXY_PORT = 8443  # in the container; published as 443
# Caddy's HTTP port in the container: ACME's HTTP-01 challenge and the redirect to HTTPS. Published as
# 80 only with a domain (without one the certificate is Caddy's own and nothing needs HTTP).
PROXY_HTTP_PORT = 8080
PROXY_HEALTH_PORT = 8081
# Caddy asks this loopback server before it issues an on-demand certificate: 200 only for the
# names the stack serves, so a client cannot make it mint and store one per SNI name it invents.
PROXY_ASK_PORT = 8082
PROXY_METRICS_PORT = 9180  # on the Compose network only (not published); Prometheus job slm-gateway
WEBUI_PORT = 8080
# Caddy labels its metrics by server, not by route: each backend gets its own server on loopback,
# named after the backend, which the public server hands the request to after the key check. Ports
# follow registry order, so adding an engine never moves another's.
FIRST_BACKEND_SERVER_PORT = 9101
# A client must send its headers within READ_HEADER_TIMEOUT and its body within READ_BODY_TIMEOUT
# (a slow client cannot hold a connection); an idle keep-alive connection closes after IDLE_TIMEOUT.
# There is no write timeout: streams last as long as the generation does.
READ_HEADER_TIMEOUT = "10s"
READ_BODY_TIMEOUT = "60s"
IDLE_TIMEOUT = "5m"
DIAL_TIMEOUT = "10s"
# A non-streaming completion answers only when the generation is done: minutes on a CPU.
RESPONSE_HEADER_TIMEOUT = "600s"
# The public server's hop to a backend's loopback server waits a little longer, so the backend
# server's own 504 (JSON) is what the client gets.
OUTER_RESPONSE_HEADER_TIMEOUT = "615s"
UNAUTHORIZED_BODY = (
    '{"error": {"message": "Missing or invalid API key: send Authorization: Bearer <key>", '
    '"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}'
)
NOT_FOUND_BODY = (
    '{"error": {"message": "Not found: this backend serves only its API paths", '
    '"type": "invalid_request_error", "param": null, "code": "not_found"}}'
)
UNSAFE_PATH_BODY = (
    '{"error": {"message": "Bad request: the path has an encoded dot, slash or backslash, a dot segment '
    'or an empty segment", "type": "invalid_request_error", "param": null, "code": "invalid_path"}}'
)
BAD_BODY_BODY = (
    '{"error": {"message": "Bad request: the body\'s chunked framing is malformed", '
    '"type": "invalid_request_error", "param": null, "code": "invalid_body"}}'
)
ERROR_BODY = (
    '{"error": {"message": "The request could not be served", '
    '"type": "server_error", "param": null, "code": "proxy_error"}}'
)
# Routes are chosen on the decoded, cleaned path but the raw one is forwarded: a path whose raw form
# differs from its cleaned form (encoded `.`, `/` or `\`, a dot segment, an empty segment) could
# reach another backend or path than the one matched, so it is refused. Query strings are not checked.
UNSAFE_RAW_PATH = r"^[^?]*(%2[eEfF]|%5[cC]|/[.][.]?([/?]|$)|//)"


def backend_server_port(backend: str) -> int:
    return FIRST_BACKEND_SERVER_PORT + registry.names().index(backend)


def _upstream_options(response_header_timeout: str) -> list[str]:
    """Inside a reverse_proxy: a backend that accepts and never answers cannot hold a client forever."""
    return [
        "transport http {",
        f"\tdial_timeout {DIAL_TIMEOUT}",
        f"\tresponse_header_timeout {response_header_timeout}",
        "}",
    ]


# Client-set forwarding headers never reach a backend (Caddy itself sets X-Forwarded-For/-Proto/-Host
# from the connection, ignoring what an untrusted client sent).
_STRIP_CLIENT_FORWARDING = ["header_up -X-Real-IP", "header_up -Forwarded"]


def _route_body(route: Route, location_prefix: str) -> list[str]:
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
        *_indent(_STRIP_CLIENT_FORWARDING, 2),
        # The backend knows only its own paths (and http://): a redirect it sends (a trailing slash
        # removed) must point back under the prefix the client used.
        f"\t\theader_down Location `^(?:https?://[^/]+)?/` {location_prefix}/",
        *_indent(_upstream_options(OUTER_RESPONSE_HEADER_TIMEOUT), 2),
        "\t}",
        "}",
        "handle {",
        "\theader Content-Type application/json",
        f"\trespond `{NOT_FOUND_BODY}` 404",
        "}",
    ]


def _errors() -> list[str]:
    """OpenAI-style JSON for the proxy's own errors (Caddy answers them with an empty body)."""

    def answer(matcher: str, body: str, status: str) -> list[str]:
        return [f"handle {matcher}{' ' if matcher else ''}{{", f"\trespond `{body}` {status}", "}"]

    handlers = [
        "header Content-Type application/json",
        # Go's chunked reader fails while the body is streamed upstream: the client's fault, not the
        # backend's.
        '@bad_body expression `{err.status_code} == 502 && {err.message}.contains("chunk")`',
        *answer("@bad_body", BAD_BODY_BODY, "400"),
        "@timeout expression `{err.status_code} == 504`",
        *answer("@timeout", TIMEOUT_BODY, "504"),
        "@unavailable expression `{err.status_code} in [502, 503]`",
        *answer("@unavailable", UNAVAILABLE_BODY, "{err.status_code}"),
        *answer("", ERROR_BODY, "{err.status_code}"),
    ]
    return ["handle_errors {", *_indent(handlers), "}"]


def _unsafe_path() -> list[str]:
    return [
        f'@unsafe_path expression `{{http.request.uri}}.matches("{UNSAFE_RAW_PATH}")`',
        "handle @unsafe_path {",
        "\theader Content-Type application/json",
        f"\trespond `{UNSAFE_PATH_BODY}` 400",
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
        *_indent(_upstream_options(RESPONSE_HEADER_TIMEOUT), 2),
        "\t}",
        *_indent(_errors()),
        "}",
        "",
    ]


def _ask_server(names: Sequence[str]) -> list[str]:
    """Answers Caddy's on-demand `ask`: 200 for the stack's own names, 403 for any other."""
    allowed = " ".join(f"domain={name}" for name in names)
    return [
        f"http://127.0.0.1:{PROXY_ASK_PORT} {{",
        "\tbind 127.0.0.1",
        f"\t@allowed query {allowed}",
        "\trespond @allowed 200",
        "\trespond 403",
        "}",
        "",
    ]


def caddy_secret(file: str) -> str:
    return file.replace(".", "_")


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    return [("\t" * depth + line) if line else line for line in lines]


def _timeouts() -> list[str]:
    return [
        "\ttimeouts {",
        f"\t\tread_header {READ_HEADER_TIMEOUT}",
        f"\t\tread_body {READ_BODY_TIMEOUT}",
        f"\t\tidle {IDLE_TIMEOUT}",
        "\t}",
    ]


def caddyfile(settings: StackSettings, backends: Sequence[Backend], public_host: str | None = None) -> str:
    gateway = settings.gateway
    global_options = [
        "admin off",
        # The adapted configuration holds every API key: never written to disk (autosave.json).
        "persist_config off",
        f"http_port {PROXY_HTTP_PORT}",
        f"https_port {PROXY_PORT}",
        "skip_install_trust",  # unprivileged: the internal CA is not added to the image's trust store
    ]
    on_demand_names: list[str] = []
    if gateway.domain:
        global_options += [f"email {gateway.acme_email}", f"acme_ca {gateway.acme_server}"]
    else:
        # Clients use the VM's DNS name (its certificate is issued on demand for the name they ask
        # for, and only for that name); a client that connects by IP sends no SNI and gets the DNS
        # name's certificate.
        on_demand_names = [public_host or "slm-serving"]
        global_options += [
            f"default_sni {on_demand_names[0]}",
            "on_demand_tls {",
            f"\task http://127.0.0.1:{PROXY_ASK_PORT}/",
            "}",
        ]
    route_list = [b.route for b in backends]
    # Request metrics (Caddy 2.10: the `metrics` option), per backend through the servers' names;
    # the backend servers trust the public one's X-Forwarded-For (the client's address).
    global_options.append("metrics")
    for route in route_list:
        global_options += [
            f"servers 127.0.0.1:{backend_server_port(route.backend)} {{",
            f"\tname {route.backend}",
            "\ttrusted_proxies static 127.0.0.1/32",
            *_timeouts(),
            "}",
        ]
    # Every other server (the first matching `servers` block applies, so this one comes last).
    global_options += ["servers {", *_timeouts(), "}"]
    lines = ["{", *_indent(global_options), "}", ""]
    # With a domain, ACME validates over HTTP-01 on port 80, which the NSG opens to the internet; 443
    # admits only allowedCidrs, where the CA's validation servers are not, so TLS-ALPN-01 is switched
    # off rather than left to fail first (a failed validation counts against the CA's rate limits).
    # The global `email` and `acme_ca` apply to this issuer. Without a domain the certificate comes
    # from Caddy's internal CA (self-signed).
    acme = ["tls {", "\tissuer acme {", "\t\tdisable_tlsalpn_challenge", "\t}", "}"]
    tls = acme if gateway.domain else ["tls internal {", "\ton_demand", "}"]
    # Defines @api_key and @no_api_key (generated at boot from the keys).
    auth = [f"import /run/secrets/{caddy_secret(API_KEYS_CADDY_FILE)}"]
    ui = [
        # One of the stack's API keys is not Open WebUI's business (its own sign-in tokens pass).
        "request_header @api_key -Authorization",
        "reverse_proxy webui:" + str(WEBUI_PORT) + " {",
        *_indent(_STRIP_CLIENT_FORWARDING),
        *_indent(_upstream_options(RESPONSE_HEADER_TIMEOUT)),
        "}",
    ]
    # Handlers in the order written (a `route`), the path check first.
    if gateway.routing == "host" and gateway.domain:
        for route in route_list:
            site = ["route {", *_indent([*_unsafe_path(), *_route_body(route, "")]), "}", *_errors()]
            lines += [f"{route.prefix}.{gateway.domain} {{", *_indent([*tls, *auth, *site]), "}", ""]
        if settings.web_ui.enabled:
            site = ["route {", *_indent([*_unsafe_path(), "handle {", *_indent(ui), "}"]), "}", *_errors()]
            lines += [f"ui.{gateway.domain} {{", *_indent([*tls, *auth, *site]), "}", ""]
    else:
        handlers = _unsafe_path()
        for route in route_list:
            handlers += [f"handle_path /{route.prefix}/* {{", *_indent(_route_body(route, f"/{route.prefix}")), "}"]
        # Open WebUI serves from the root path only: it takes whatever no backend prefix matches.
        handlers += ["handle {", *_indent(ui if settings.web_ui.enabled else ["respond 404"]), "}"]
        body = [*tls, *auth, "route {", *_indent(handlers), "}", *_errors()]
        lines += [f"{gateway.domain or f':{PROXY_PORT}'} {{", *_indent(body), "}", ""]
    for backend in backends:
        lines += _backend_server(backend)
    if on_demand_names:
        lines += _ask_server(on_demand_names)
    # Scraped by Prometheus over the Compose network (job slm-gateway); the port is not published.
    lines += [f"http://:{PROXY_METRICS_PORT} {{", "\tmetrics /metrics", "}", ""]
    lines += [f"http://127.0.0.1:{PROXY_HEALTH_PORT} {{", "\tbind 127.0.0.1", "\trespond /healthz 200", "}"]
    return "\n".join(lines) + "\n"


def published_ports(settings: StackSettings) -> list[str]:
    """The proxy's `host:container` ports on the VM's public interface."""
    ports = [f"443:{PROXY_PORT}"]
    if settings.gateway.domain:
        ports.append(f"80:{PROXY_HTTP_PORT}")
    return ports


def add_proxy(
    document: dict[str, Any], settings: StackSettings, backends: Sequence[Backend], public_host: str | None
) -> None:
    document["configs"]["caddyfile"] = {"content": caddyfile(settings, backends, public_host)}
    for file in (API_KEYS_CADDY_FILE, UPSTREAM_AUTH_CADDY_FILE):
        document["secrets"][caddy_secret(file)] = {"file": host_path(file)}
    data = PROXY_FOLDERS[0]
    document["services"]["proxy"] = hardened(
        {
            "image": CADDY_IMAGE,
            "user": f"{WORKLOAD_UID}:{WORKLOAD_UID}",
            # The image's caddy binary carries the file capability cap_net_bind_service=+ep; the kernel
            # refuses to exec it when that capability is outside the bounding set.
            "cap_add": ["NET_BIND_SERVICE"],
            # The only ports on a public interface: 443 (the NSG admits allowedCidrs) and, with a
            # domain, 80 for ACME's HTTP-01 challenge and the redirect (the NSG admits the internet).
            "ports": published_ports(settings),
            "configs": [{"source": "caddyfile", "target": "/etc/caddy/Caddyfile"}],
            "secrets": [caddy_secret(API_KEYS_CADDY_FILE), caddy_secret(UPSTREAM_AUTH_CADDY_FILE)],
            # Certificates on the data disk; /config (where Caddy would save the adapted configuration,
            # API keys included) in memory only.
            "volumes": [f"{DATA_DIR}/{data}:/data"],
            "tmpfs": ["/tmp", "/config"],
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "-O-", f"http://127.0.0.1:{PROXY_HEALTH_PORT}/healthz"],
                "interval": "30s",
                "timeout": "5s",
                "retries": 3,
            },
            "restart": "unless-stopped",
        }
    )
