"""ASGI middleware in front of the routes: a body-size limit, and error bodies on framework answers.

BentoML 1.4.39 has no request-size limit (a 200 MB body was accepted), and its router answers an
unknown path or a wrong method with a plain-text 404 or 405. Both answer here with the service's
`{"error", "detail"}` body (yolo_toys/errors.py).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings

MULTIPART_OVERHEAD = 1024 * 1024  # room for the option fields and part headers beside the image


class BodyTooLarge(Exception):
    """Raised inside `receive` when a streamed body passes the limit."""


class BodyLimit:
    """Answer 413 to any request body above `max_bytes` (by default the upload limit plus room for
    the form's other fields), declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or settings().max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            declared_size = int(declared) if declared is not None else None
        except ValueError:
            await ServiceError(400, "bad request", "Content-Length is not a number").response()(scope, receive, send)
            return
        if declared_size is not None and declared_size > self.max_bytes:
            await self._too_large(declared_size).response()(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting its body; past the limit, the app's own answer is replaced by a 413."""
        received = 0
        overflow = replaced = False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflow = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if not overflow:
                await send(message)
            elif not replaced and message["type"] == "http.response.start":
                replaced = True
                await self._too_large(received).response()(scope, receive, send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not replaced:
                await self._too_large(received).response()(scope, receive, send)

    def _too_large(self, size: int) -> ServiceError:
        return ServiceError(413, "request too large", f"request body of {size}+ bytes; the limit is {self.max_bytes} bytes")


_FRAMEWORK_ERRORS = {404: "not found", 405: "method not allowed"}


class ErrorBodies:
    """Give the framework's own 404 and 405 answers (unknown path, wrong method) the service's error body.

    An answer that already has an `error` field (the service's own 404s) passes unchanged; 405
    keeps its `Allow` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = b""

        async def rewriting_send(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start" and message["status"] in _FRAMEWORK_ERRORS:
                start = message
                return
            if start is None:
                await send(message)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                await self._answer(scope, start, body, send)

        await self.app(scope, receive, rewriting_send)

    @staticmethod
    async def _answer(scope: Scope, start: Message, body: bytes, send: Send) -> None:
        if _has_error_field(body):
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        status = start["status"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"] if k.lower() == b"allow"}
        where = f"{scope['method']} {scope['path']}"
        detail = f"{where}; allowed: {headers['allow']}" if "allow" in headers else f"{where}; the API is at /docs.json"
        response = ServiceError(status, _FRAMEWORK_ERRORS[status], detail, headers=headers).response()
        await response(scope, _no_receive, send)


def _has_error_field(body: bytes) -> bool:
    try:
        return isinstance(parsed := json.loads(body), dict) and "error" in parsed
    except ValueError:
        return False


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
