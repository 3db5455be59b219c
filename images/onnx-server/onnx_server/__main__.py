"""`python -m onnx_server --model DIR [--host H --port P] [--api-key-file F]` (also the image's entry point)."""

from __future__ import annotations

import logging
import math
import sys

import uvicorn
from prometheus_client import start_http_server

from onnx_server import access, genai, logs, settings
from onnx_server.app import Service, create_app
from onnx_server.metrics import Metrics
from onnx_server.protocol import with_header_timeout
from onnx_server.serve import DrainingServer


def main(argv: list[str] | None = None) -> int:
    genai.disable_telemetry()  # before onnxruntime loads: it reads the switch once, at start
    config = settings.parse(argv)
    logs.configure(exception_text=config.log_prompts)
    if not (config.model / "genai_config.json").is_file():
        print(f"error: {config.model} is not an onnxruntime-genai model folder (no genai_config.json)", file=sys.stderr)
        return 2
    metrics = Metrics(config.served_model_name or config.model.resolve().name)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.host, registry=metrics.registry)
    app = create_app(config, metrics)
    service: Service = app.state.service

    def refused(method: str | None, path: str | None, status: int, outcome: str, ms: float) -> None:
        access.record(metrics, method=method, path=path, status=status, outcome=outcome, ms=ms)

    logging.getLogger("onnx_server").info(
        "starting", extra={"host": config.host, "port": config.port, "auth": not config.allow_unauthenticated}
    )
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(config.graceful_shutdown_seconds),
        server_header=False,
        timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]  # uvicorn takes float seconds
        http=with_header_timeout(config.header_timeout, refused),
    )
    DrainingServer(server_config, service.draining.set, service.end_requests).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
