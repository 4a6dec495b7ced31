"""What stands between the network and the API methods: a body-size limit and upload-only files.

Both close gaps of BentoML 1.4.39 that would otherwise answer bad requests with a 500 (or accept
them): it has no request-size limit, it downloads any URL string given in a file field, and it
reports malformed multipart bodies as internal errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from _bentoml_impl.serde import MultipartSerde
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_OVERHEAD = 1024 * 1024  # room for the option fields and part headers beside the image


def _json_message(status: int, error: str, detail: str) -> list[Message]:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answer 413 to any request body above `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            declared_size = int(declared) if declared is not None else None
        except ValueError:
            for message in _json_message(400, "bad request", "Content-Length is not a number"):
                await send(message)
            return
        if declared_size is not None and declared_size > self.max_bytes:
            await self._too_large(send, declared_size)
            return

        received = 0
        overflow = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflow = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if overflow:
                if not replaced and message["type"] == "http.response.start":
                    replaced = True
                    await self._too_large(send, received)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not replaced:
                await self._too_large(send, received)

    async def _too_large(self, send: Send, size: int) -> None:
        detail = f"request body of {size}+ bytes; the limit is {self.max_bytes} bytes"
        for message in _json_message(413, "request too large", detail):
            await send(message)


def _validation_error(field: str, message: str) -> ValidationError:
    error = InitErrorDetails(type=PydanticCustomError("upload", message), loc=(field,), input=None)
    return ValidationError.from_exception_data(f"upload field {field!r}", [error])


_parse_multipart = MultipartSerde.parse_request


async def _parse_uploads_only(self: MultipartSerde, request: Any, cls: Any) -> Any:
    """Multipart parsing that refuses URL strings in file fields and malformed bodies with a 400."""
    try:
        form = await request.form()
    except (MultiPartException, HTTPException, ValueError) as exc:
        raise _validation_error("body", f"malformed multipart/form-data body: {getattr(exc, 'detail', exc)}") from None
    for name in cls.multipart_fields:
        for value in form.getlist(name):
            if isinstance(value, str):
                raise _validation_error(name, f"`{name}` must be an uploaded file; URLs and text are not accepted")
    return await _parse_multipart(self, request, cls)


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every rejected request body as an ERROR with a traceback; one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ValidationError, _BodyTooLarge)):
            reason = exc.title if isinstance(exc, ValidationError) else "request body over the size limit"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "rejected %s: %s", (record.args[0] if record.args else "request", reason)
            record.exc_info, record.exc_text = None, None
        return True


def install_guards() -> None:
    MultipartSerde.parse_request = _parse_uploads_only  # type: ignore[method-assign]
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())
