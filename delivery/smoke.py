"""Smoke test of a deployed stack: every backend in the `endpoints` output, through the gateway.

Per backend: `/v1/models` lists the expected models, one short chat completion answers, and a request
without an API key is refused with 401. TLS is always verified: without `gateway.domain` the
certificate is signed by the stack's own CA, so pass it as `ca_file`
(Kubernetes: `kubectl -n slm-serving get secret slm-serving-ca -o jsonpath='{.data.ca\\.crt}' | base64 -d`;
VM: Caddy's root, /var/lib/slm-serving/caddy/data/caddy/pki/authorities/local/root.crt).
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

PROMPT = "Reply with one word: hello."
MAX_TOKENS = 8


class SmokeConfigError(Exception):
    """The stack's outputs or the TLS options cannot drive a smoke test."""


@dataclass(frozen=True)
class Endpoint:
    backend: str
    base_url: str
    model: str
    models: tuple[str, ...]


@dataclass
class BackendResult:
    backend: str
    base_url: str
    model: str
    models_ok: bool = False
    chat_ok: bool = False
    unauthorized_ok: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.models_ok and self.chat_ok and self.unauthorized_ok and not self.errors


@dataclass
class SmokeReport:
    results: list[BackendResult]

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def summary(self) -> str:
        failed = [f"{r.backend}: {'; '.join(r.errors) or 'failed'}" for r in self.results if not r.ok]
        if not self.results:
            return "no backends in the stack's endpoints output"
        return "all backends passed" if not failed else " | ".join(failed)

    def table(self) -> str:
        def mark(ok: bool) -> str:
            return "ok" if ok else "FAIL"

        rows = [("backend", "models", "chat", "401", "base URL / errors")]
        for r in self.results:
            detail = r.base_url if r.ok else f"{r.base_url}: {'; '.join(r.errors)}"
            rows.append((r.backend, mark(r.models_ok), mark(r.chat_ok), mark(r.unauthorized_ok), detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4]]) for row in rows]
        return "\n".join(lines)


def parse_endpoints(endpoints: Any) -> list[Endpoint]:
    """The `endpoints` stack output: {backends: {<name>: {baseUrl, model, models, ...}}, gateway}."""
    if not isinstance(endpoints, Mapping) or not isinstance(endpoints.get("backends"), Mapping):
        raise SmokeConfigError("the stack's `endpoints` output has no `backends` map")
    parsed: list[Endpoint] = []
    for name, spec in sorted(endpoints["backends"].items()):
        if not isinstance(spec, Mapping) or not spec.get("baseUrl") or not spec.get("model"):
            raise SmokeConfigError(f"endpoints.backends.{name} needs baseUrl and model")
        models = tuple(str(m) for m in spec.get("models") or [spec["model"]])
        parsed.append(Endpoint(str(name), str(spec["baseUrl"]).rstrip("/"), str(spec["model"]), models))
    return parsed


def tls_verify(ca_file: Path | None, insecure: bool) -> ssl.SSLContext | bool:
    """An SSL context trusting `ca_file`, the system store, or (only when asked, loudly) nothing."""
    if ca_file is not None and insecure:
        raise SmokeConfigError("--ca-file and --insecure contradict each other; pass one")
    if insecure:
        print(
            "warning: TLS verification is OFF (--insecure): the API key is sent to whoever answers; "
            "pass --ca-file with the stack's CA instead",
            file=sys.stderr,
        )
        return False
    if ca_file is not None:
        if not ca_file.is_file():
            raise SmokeConfigError(f"CA file {ca_file} does not exist")
        return ssl.create_default_context(cafile=str(ca_file))
    return True


def _redact(text: str, secret: str) -> str:
    one_line = " ".join(text.split())
    return one_line.replace(secret, "[secret]") if secret else one_line


def check_backend(
    endpoint: Endpoint, api_key: str, verify: ssl.SSLContext | bool, timeout: float = 120.0
) -> BackendResult:
    result = BackendResult(endpoint.backend, endpoint.base_url, endpoint.model)
    with (
        openai.DefaultHttpxClient(verify=verify, timeout=timeout) as api_http,
        httpx.Client(verify=verify, timeout=timeout) as http,
    ):
        client = openai.OpenAI(base_url=endpoint.base_url, api_key=api_key, http_client=api_http, max_retries=1)
        try:
            listed = {m.id for m in client.models.list()}
            missing = [m for m in endpoint.models if m not in listed]
            if missing:
                result.errors.append(f"/models lacks {', '.join(missing)} (has {', '.join(sorted(listed)) or 'none'})")
            else:
                result.models_ok = True
        except openai.OpenAIError as error:
            result.errors.append(f"/models: {_redact(str(error), api_key)}")
        try:
            reply = client.chat.completions.create(
                model=endpoint.model,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=MAX_TOKENS,
            )
            if reply.choices and reply.choices[0].message is not None:
                result.chat_ok = True
            else:
                result.errors.append("chat completion returned no choices")
        except openai.OpenAIError as error:
            result.errors.append(f"chat: {_redact(str(error), api_key)}")
        try:
            # No Authorization header at all: the gateway (and vLLM/ONNX themselves) must refuse.
            status = http.get(f"{endpoint.base_url}/models").status_code
            if status == 401:
                result.unauthorized_ok = True
            else:
                result.errors.append(f"request without a key answered {status}, expected 401")
        except httpx.HTTPError as error:
            result.errors.append(f"unauthenticated request: {_redact(str(error), api_key)}")
    return result


def smoke_test(
    endpoints: Any, api_key: str, verify: ssl.SSLContext | bool = True, timeout: float = 120.0
) -> SmokeReport:
    if not api_key:
        raise SmokeConfigError("the stack has no `apiKey` output")
    return SmokeReport([check_backend(e, api_key, verify, timeout) for e in parse_endpoints(endpoints)])


def smoke_outputs(
    outputs: Mapping[str, Any], verify: ssl.SSLContext | bool = True, timeout: float = 120.0
) -> SmokeReport:
    """The smoke test driven by a stack's outputs (`endpoints` and the secret `apiKey`)."""
    return smoke_test(outputs.get("endpoints"), str(outputs.get("apiKey") or ""), verify, timeout)
