"""OpenAI-style errors: the exception routes raise and the JSON body every client library parses."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from onnx_server import schemas


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_response(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    *,
    close: bool = False,
) -> JSONResponse:
    body = schemas.ErrorResponse(error=schemas.ErrorDetail(message=message, type=kind, param=param, code=code))
    headers = {"Retry-After": "1"} if status in (429, 503) else {}
    if close:
        # The request was not read to its end: the connection cannot carry another one.
        headers["Connection"] = "close"
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def error_kind(status: int) -> str:
    return {400: "invalid_request_error", 504: "timeout"}.get(status, "server_error")
