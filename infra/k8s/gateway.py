"""The one entry point: an Envoy Gateway with TLS from cert-manager (ACME for a configured domain,
else a self-signed CA), a route per backend, and an API-key check on every backend route.

Ollama has no authentication of its own and vLLM's key guards only /v1, so the gateway's check is
the one that covers every path; the backends that can also check keys do (defence in depth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.backends.description import Route
from infra.config import GatewayConfig
from infra.conventions import BACKEND_PORT, TIMEOUT_BODY, UNAVAILABLE_BODY
from infra.endpoints import is_ip
from infra.k8s.web_ui import WEB_UI_NAME, WEB_UI_PORT

GATEWAY_NAME = "slm-serving"
GATEWAY_CLASS = "slm-serving"
CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
# Envoy Gateway runs the proxies in its own namespace, as a Service with this fixed name.
PROXY_NAMESPACE = "envoy-gateway-system"
PROXY_SERVICE = "slm-serving-gateway"
PROXY_POD_LABELS = {"app.kubernetes.io/name": "envoy", "gateway.envoyproxy.io/owning-gateway-name": GATEWAY_NAME}
TLS_SECRET = "gateway-tls"  # noqa: S105 (a Secret's name)
SELF_SIGNED_NAME = "slm-serving.internal"
# Long generations stream for minutes; Envoy's default route timeout (15 s) would cut them.
REQUEST_TIMEOUT = "900s"
# A client must have sent its whole request (headers and body) within this; responses are not
# bounded by it, so streams last as long as the generation does.
REQUEST_RECEIVED_TIMEOUT = "60s"
IDLE_TIMEOUT = "300s"
CONNECT_TIMEOUT = "10s"
# Client-set forwarding headers never reach a backend: removed before Envoy routes, so the
# X-Forwarded-For the backends see is the one Envoy writes (the client's address), as on the VM.
CLIENT_FORWARDING_HEADERS = ("X-Real-IP", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host")

GATEWAY_API = "gateway.networking.k8s.io/v1"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
CERT_MANAGER_API = "cert-manager.io/v1"


@dataclass(frozen=True)
class ServingGatewayArgs:
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    config: GatewayConfig
    routes: Sequence[Route]
    api_keys_secret: pulumi.Input[str]
    labels: dict[str, str]
    # Annotations for the Envoy Service (the Azure address on aks).
    service_annotations: pulumi.Input[dict[str, str]] = field(default_factory=dict)
    # The names (or IPs) clients use for the gateway: on the certificate too (aks: the public IP's
    # DNS name or the internal IP; cluster: gateway.address).
    extra_hosts: pulumi.Input[list[str]] = field(default_factory=list)
    web_ui: bool = False
    # The add-on charts (Envoy Gateway, cert-manager) whose CRDs these objects need.
    depends_on: Sequence[pulumi.Resource] = ()


def _hostnames(config: GatewayConfig, prefix: str) -> list[str]:
    if config.routing == "host" and config.domain:
        return [f"{prefix}.{config.domain}"]
    return []


def certificate_names(
    config: GatewayConfig, routes: Sequence[Route], web_ui: bool, extra_hosts: Sequence[str] = ()
) -> list[str]:
    if config.domain is None:
        names = [SELF_SIGNED_NAME, f"{PROXY_SERVICE}.{PROXY_NAMESPACE}.svc"]
        return names + [h for h in dict.fromkeys(extra_hosts) if h and h not in names]
    if config.routing == "path":
        return [config.domain]
    prefixes = [r.prefix for r in routes] + (["ui"] if web_ui else [])
    return [f"{p}.{config.domain}" for p in prefixes]


def strip_headers(*extra: str) -> dict[str, object]:
    """A rule's filter removing the client's forwarding headers (and `extra`) before the backend."""
    return {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": [*CLIENT_FORWARDING_HEADERS, *extra]}}


def backend_rules(config: GatewayConfig, route: Route) -> list[dict[str, object]]:
    rule: dict[str, object] = {
        "backendRefs": [{"name": route.backend, "port": BACKEND_PORT}],
        "timeouts": {"request": REQUEST_TIMEOUT},
    }
    if config.routing == "path":
        # /<prefix>/v1/... reaches the backend as /v1/...: one rule per API path the backend serves.
        return [
            {
                **rule,
                "matches": [{"path": {"type": "PathPrefix", "value": f"/{route.prefix}{path}"}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": path}},
                    },
                    strip_headers(),
                ],
            }
            for path in route.paths
        ]
    # Host routing: <prefix>.<domain> carries only the backend's API paths.
    return [
        {
            **rule,
            "matches": [{"path": {"type": "PathPrefix", "value": path}} for path in route.paths],
            "filters": [strip_headers()],
        }
    ]


def client_traffic_spec() -> dict[str, object]:
    """The listener's handling of what clients send (ClientTrafficPolicy on the Gateway)."""
    return {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GATEWAY_NAME}],
        # Routes match on the normalised path, and that is what is forwarded: %2F/%5C are refused
        # (400) rather than decoded into a path another route owns; `..` segments are resolved and
        # adjacent slashes merged by Envoy's normalisation before matching.
        "path": {"escapedSlashesAction": "RejectRequest", "disableMergeSlashes": False},
        "headers": {"earlyRequestHeaders": {"remove": list(CLIENT_FORWARDING_HEADERS)}},
        # The client is the connection's peer (no proxy in front of Envoy is trusted).
        "clientIPDetection": {"xForwardedFor": {"numTrustedHops": 0}},
        "timeout": {"http": {"requestReceivedTimeout": REQUEST_RECEIVED_TIMEOUT, "idleTimeout": IDLE_TIMEOUT}},
    }


def backend_traffic_spec(route_names: Sequence[str]) -> dict[str, object]:
    """Connection timeouts and JSON errors for the backend routes (BackendTrafficPolicy)."""

    def override(codes: Sequence[int], body: str) -> dict[str, object]:
        return {
            "match": {"statusCodes": [{"type": "Value", "value": code} for code in codes]},
            "response": {"contentType": "application/json", "body": {"type": "Inline", "inline": body}},
        }

    return {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": r} for r in route_names],
        "timeout": {"tcp": {"connectTimeout": CONNECT_TIMEOUT}, "http": {"connectionIdleTimeout": IDLE_TIMEOUT}},
        "responseOverride": [override((502, 503), UNAVAILABLE_BODY), override((504,), TIMEOUT_BODY)],
    }


class ServingGateway(pulumi.ComponentResource):
    # The in-cluster address of the gateway (https, port 443).
    in_cluster_host: str
    route_names: list[str]

    def __init__(self, name: str, args: ServingGatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:ServingGateway", name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        labels = {**args.labels, "app.kubernetes.io/component": "gateway"}
        ns = args.namespace

        self._name, self._namespace, self._labels, self._child = name, ns, labels, child

        service: dict[str, object] = {
            "name": PROXY_SERVICE,
            "annotations": args.service_annotations,
            # Internal-only without a cloud load balancer: reachable in the cluster (or by port-forward).
            "type": "ClusterIP" if config.internal_only and not args.service_annotations else "LoadBalancer",
        }
        proxy = self._object(
            "envoy-proxy",
            ENVOY_GATEWAY_API,
            "EnvoyProxy",
            "slm-serving-proxy",
            {
                "provider": {
                    "type": "Kubernetes",
                    "kubernetes": {
                        "envoyService": service,
                        "envoyDeployment": {
                            "replicas": 2,
                            "container": {
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "256Mi"},
                                    "limits": {"memory": "1Gi"},
                                }
                            },
                        },
                    },
                }
            },
        )
        gateway_class = k8s.apiextensions.CustomResource(
            f"{name}-class",
            api_version=GATEWAY_API,
            kind="GatewayClass",
            metadata={"name": GATEWAY_CLASS, "labels": labels},
            spec={"controllerName": CONTROLLER},
            opts=child,
        )

        issuer = self._tls(args)

        listeners: list[dict[str, object]] = [
            {
                "name": "https",
                "protocol": "HTTPS",
                "port": 443,
                "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": TLS_SECRET}]},
                "allowedRoutes": {"namespaces": {"from": "Same"}},
            }
        ]
        if config.domain is not None:
            # Only for ACME's HTTP-01 challenge and a redirect to HTTPS.
            listeners.append(
                {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "Same"}}}
            )
        gateway = k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version=GATEWAY_API,
            kind="Gateway",
            metadata={"name": GATEWAY_NAME, "namespace": ns, "labels": labels},
            spec={
                "gatewayClassName": GATEWAY_CLASS,
                "infrastructure": {
                    "parametersRef": {
                        "group": "gateway.envoyproxy.io",
                        "kind": "EnvoyProxy",
                        "name": "slm-serving-proxy",
                    }
                },
                "listeners": listeners,
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[proxy, gateway_class, issuer])),
        )
        after_gateway = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[gateway]))
        https_parent = [{"name": GATEWAY_NAME, "sectionName": "https"}]

        self.route_names = []
        for route in args.routes:
            k8s.apiextensions.CustomResource(
                f"{name}-route-{route.backend}",
                api_version=GATEWAY_API,
                kind="HTTPRoute",
                metadata={"name": route.backend, "namespace": ns, "labels": labels},
                spec={
                    "parentRefs": https_parent,
                    "hostnames": _hostnames(config, route.prefix),
                    "rules": backend_rules(config, route),
                },
                opts=after_gateway,
            )
            self.route_names.append(route.backend)

        if args.web_ui:
            # Open WebUI serves from the root path only: it takes what no backend prefix matches
            # (path routing) or ui.<domain> (host routing). It has its own sign-in.
            k8s.apiextensions.CustomResource(
                f"{name}-route-ui",
                api_version=GATEWAY_API,
                kind="HTTPRoute",
                metadata={"name": WEB_UI_NAME, "namespace": ns, "labels": labels},
                spec={
                    "parentRefs": https_parent,
                    "hostnames": _hostnames(config, "ui"),
                    "rules": [
                        {
                            "backendRefs": [{"name": WEB_UI_NAME, "port": WEB_UI_PORT}],
                            "timeouts": {"request": REQUEST_TIMEOUT},
                            # A client's API key is not Open WebUI's business; the browser signs in
                            # with Open WebUI's own session cookie.
                            "filters": [strip_headers("Authorization")],
                        }
                    ],
                },
                opts=after_gateway,
            )

        if config.domain is not None:
            k8s.apiextensions.CustomResource(
                f"{name}-https-redirect",
                api_version=GATEWAY_API,
                kind="HTTPRoute",
                metadata={"name": "https-redirect", "namespace": ns, "labels": labels},
                spec={
                    "parentRefs": [{"name": GATEWAY_NAME, "sectionName": "http"}],
                    "rules": [
                        {
                            "filters": [
                                {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
                            ]
                        }
                    ],
                },
                opts=after_gateway,
            )

        # Every backend route: a request without a known key is answered 401 by the gateway.
        k8s.apiextensions.CustomResource(
            f"{name}-api-key-auth",
            api_version=ENVOY_GATEWAY_API,
            kind="SecurityPolicy",
            metadata={"name": "api-key-auth", "namespace": ns, "labels": labels},
            spec={
                "targetRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": r} for r in self.route_names
                ],
                "apiKeyAuth": {
                    "credentialRefs": [{"group": "", "kind": "Secret", "name": args.api_keys_secret}],
                    # OpenAI clients send `Authorization: Bearer <key>`; Envoy strips the "Bearer " prefix.
                    "extractFrom": [{"headers": ["authorization"]}],
                },
            },
            opts=after_gateway,
        )
        self._object(
            "client-traffic",
            ENVOY_GATEWAY_API,
            "ClientTrafficPolicy",
            "client-traffic",
            client_traffic_spec(),
            [gateway],
        )
        if self.route_names:
            self._object(
                "backend-traffic",
                ENVOY_GATEWAY_API,
                "BackendTrafficPolicy",
                "backend-traffic",
                backend_traffic_spec(self.route_names),
                [gateway],
            )
        self.in_cluster_host = f"{PROXY_SERVICE}.{PROXY_NAMESPACE}.svc"
        self.register_outputs({"routes": self.route_names})

    def _object(  # noqa: PLR0917 (mirrors a manifest's own fields, in their order)
        self,
        resource: str,
        api: str,
        kind: str,
        object_name: str,
        spec: object,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> k8s.apiextensions.CustomResource:
        return k8s.apiextensions.CustomResource(
            f"{self._name}-{resource}",
            api_version=api,
            kind=kind,
            metadata={"name": object_name, "namespace": self._namespace, "labels": self._labels},
            spec=spec,
            opts=pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=list(depends_on))),
        )

    def _tls(self, args: ServingGatewayArgs) -> pulumi.Resource:
        """The certificate the HTTPS listener serves and the issuer that signs it; returns the certificate."""
        config = args.config
        make = self._object
        if config.domain is not None:
            issuer = make(
                "acme-issuer",
                CERT_MANAGER_API,
                "Issuer",
                "acme",
                {
                    "acme": {
                        "email": config.acme_email,
                        "server": config.acme_server,
                        "privateKeySecretRef": {"name": "acme-account-key"},
                        "solvers": [
                            {
                                "http01": {
                                    "gatewayHTTPRoute": {
                                        "parentRefs": [{"name": GATEWAY_NAME, "kind": "Gateway", "sectionName": "http"}]
                                    }
                                }
                            }
                        ],
                    }
                },
            )
            issuer_name = "acme"
        else:
            # Self-signed root -> CA issuer -> serving certificate: clients trust the CA (ca.crt).
            self_signed = make("self-signed-issuer", CERT_MANAGER_API, "Issuer", "self-signed", {"selfSigned": {}})
            ca = make(
                "ca-certificate",
                CERT_MANAGER_API,
                "Certificate",
                "slm-serving-ca",
                {
                    "isCA": True,
                    "commonName": "slm-serving CA",
                    "secretName": "slm-serving-ca",
                    "duration": "87600h",
                    "privateKey": {"algorithm": "ECDSA", "size": 256},
                    "issuerRef": {"name": "self-signed", "kind": "Issuer", "group": "cert-manager.io"},
                },
                depends_on=[self_signed],
            )
            issuer = make(
                "ca-issuer",
                CERT_MANAGER_API,
                "Issuer",
                "slm-serving-ca",
                {"ca": {"secretName": "slm-serving-ca"}},
                depends_on=[ca],
            )
            issuer_name = "slm-serving-ca"
        return make(
            "certificate",
            CERT_MANAGER_API,
            "Certificate",
            TLS_SECRET,
            pulumi.Output.from_input(args.extra_hosts).apply(
                lambda hosts: self._certificate_spec(args, issuer_name, hosts)
            ),
            depends_on=[issuer],
        )

    @staticmethod
    def _certificate_spec(args: ServingGatewayArgs, issuer_name: str, hosts: Sequence[str]) -> dict[str, object]:
        names = certificate_names(args.config, args.routes, args.web_ui, hosts)
        spec: dict[str, object] = {
            "secretName": TLS_SECRET,
            "dnsNames": [n for n in names if not is_ip(n)],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {"name": issuer_name, "kind": "Issuer", "group": "cert-manager.io"},
        }
        addresses = [n for n in names if is_ip(n)]
        if addresses:
            spec["ipAddresses"] = addresses
        return spec
