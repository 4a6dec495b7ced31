"""ASGI middleware in front of the routes: a body-size limit, and error bodies on framework answers.

BentoML 1.4.39 has no request-size limit (a 200 MB body was accepted), and its router answers an
unknown path or a wrong method with a plain-text 404 or 405. Both answer here with the service's
`{"error", "detail"}` body (yolo_toys/errors.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings

# Room for the option fields and part headers beside the image. A `POST /batch` has the same limit for all
# its images together (up to YOLO_TOYS_MAX_REQUEST_IMAGES, 64: ~300 KB each by default, a 1080p JPEG), so
# that a request costs the front the same memory and receive time whichever route it takes; its part
# headers (~200 bytes an image) fit in this room.
MULTIPART_OVERHEAD = 1024 * 1024
MIB = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised inside `receive` when a streamed body passes the limit."""


class BodyTimeout(Exception):
    """Raised inside `receive` when the client has not sent its body in time."""


class ClientGone(Exception):
    """Raised inside `receive` when the client closes the connection before its body is complete."""


class BodyLimit:
    """Bounds what a request body may cost: its size (413), the time to send it (408, then the
    connection is closed), and how many are received at once (503 with `Retry-After`).

    A client that leaves mid-upload is answered 499 (nobody reads it): the metrics count no 500 and
    the log keeps the access line only (yolo_toys/workarounds.py quiets BentoML's traceback).
    """

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or settings().max_upload_bytes + MULTIPART_OVERHEAD
        self.artifact_bytes = settings().max_artifact_bytes + MULTIPART_OVERHEAD  # POST /models: a model, not an image
        self.receiving = 0

    def max_for(self, scope: Scope) -> int:
        return self.artifact_bytes if scope["method"] == "POST" and scope["path"] == "/models" else self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            await ServiceError(400, "bad request", "Content-Length is not a number").response()(scope, receive, send)
            return
        max_bytes = self.max_for(scope)
        if declared is not None and declared > max_bytes:
            await self.too_large(declared, max_bytes).response()(scope, receive, send)
            return
        if not declared and b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        limit = settings().max_uploads
        if self.receiving >= limit:
            busy = ServiceError.retry_later("too many uploads", f"{limit} request bodies are being received; retry later",
                                            Connection="close")  # fmt: skip
            await busy.response()(scope, receive, send)
            return
        await _Upload(self, declared, max_bytes).run(scope, receive, send)

    def too_large(self, size: int, max_bytes: int) -> ServiceError:
        return ServiceError(413, "request too large", f"request body of {size}+ bytes; the limit is {max_bytes} bytes")


class _Upload:
    """One request body on its way in: counted, timed, and the app's answer replaced if it fails."""

    def __init__(self, limit: BodyLimit, declared: int | None, max_bytes: int) -> None:
        self.limit, self.max_bytes, self.received, self.complete = limit, max_bytes, 0, False
        s = settings()
        self.allowed_s = s.body_timeout_s + s.body_s_per_mib * (declared if declared is not None else max_bytes) / MIB
        self.deadline = time.monotonic() + self.allowed_s
        self.failure: ServiceError | None = None
        limit.receiving += 1

    def _done(self) -> None:
        if not self.complete:
            self.complete = True
            self.limit.receiving -= 1

    async def receive(self, receive: Receive) -> Message:
        if self.complete:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(self.deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            late = f"the body was not sent within {self.allowed_s:.0f} s ({self.received} bytes arrived)"
            self.fail(ServiceError(408, "request timeout", late), BodyTimeout)
        if message["type"] == "http.disconnect":
            self.fail(ServiceError(499, "client closed request", f"after {self.received} bytes"), ClientGone)
        self.received += len(message.get("body", b""))
        if self.received > self.max_bytes:
            self.fail(self.limit.too_large(self.received, self.max_bytes), BodyTooLarge)
        if not message.get("more_body", False):
            self._done()
        return message

    def fail(self, error: ServiceError, raising: type[Exception]) -> NoReturn:
        self._done()
        error.headers["Connection"] = "close"
        self.failure = error
        raise raising(error.detail)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app with the counted `receive`; once the body failed, its own answer is replaced by ours."""
        answered = False

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if self.failure is None:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                answered = True
                await self.failure.response()(scope, _no_receive, send)

        try:
            await self.limit.app(scope, lambda: self.receive(receive), guarded_send)
        except (BodyTooLarge, BodyTimeout, ClientGone):
            if not answered and self.failure is not None:
                await self.failure.response()(scope, _no_receive, send)
        finally:
            self._done()


class FormsOnly:
    """The image routes take a multipart form: any other body gets 415 saying how to send one.

    BentoML would read a raw image body (`--data-binary @bus.jpg`, the way TorchServe is called) as
    JSON and answer "Invalid JSON".
    """

    def __init__(self, app: ASGIApp, routes: tuple[str, ...] = ()) -> None:
        self.app, self.routes = app, frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            media_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"multipart/form-data":
                sent = media_type.decode("latin-1") or "no Content-Type"
                how = f"send a multipart/form-data form with the image in the `image` field (`images` for /batch), " \
                      f"e.g. curl -F image=@photo.jpg http://HOST{scope['path']} (the fields of each route: /docs.json)"
                error = ServiceError(415, "unsupported media type", f"{sent}: {how}", headers={"Connection": "close"})
                await error.response()(scope, _no_receive, send)
                return
        await self.app(scope, receive, send)


_FRAMEWORK_ERRORS = {404: "not found", 405: "method not allowed"}


class ErrorBodies:
    """Give the framework's own 404 and 405 answers (unknown path, wrong method) the service's error
    body, and no answer a `server` header naming the framework (BentoML sends `BentoML Service/...`).

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
            if message["type"] == "http.response.start":
                message = {**message, "headers": [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]}
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
