"""Every place YOLO-Toys works around BentoML, with the version it was measured on and its upstream issue.

Nothing here runs at import. `install()` runs at start-up in each service process: it applies the
patches and checks the installed BentoML against the version each workaround was written for; on
another version it logs one warning per workaround to re-check, and a patch whose target is gone
stops the start-up instead of failing later. The other entries are settings or code elsewhere
(named in `where`); they are listed so that one file tells what to re-check on an upgrade.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("yolo_toys.workarounds")

WRITTEN_FOR = "1.4.39"

# Runner (dependency) services: the inter-service client otherwise recycles its session every 100
# requests while calls are in flight, and some of those calls fail under load (6% at c=8 here).
RUNNER_CONNECTION = {"max_requests": 10**9, "max_age": 1e9}


@dataclass(frozen=True)
class Workaround:
    name: str
    issue: str  # upstream issue or PR, or what was measured here where none is filed
    where: str  # the code that holds it
    apply: Callable[[], None] | None = None  # a patch applied by install(); None: a setting or code elsewhere


def _validation_error(field: str, message: str) -> Exception:
    from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

    error = InitErrorDetails(type=PydanticCustomError("upload", message), loc=(field,), input=None)
    return ValidationError.from_exception_data(f"upload field {field!r}", [error])


async def _check_form_fields(form: Any, cls: Any) -> None:
    """Every part names a field of the route, once for a file field (repeated for a list of files:
    `images` of /batch); files there, text elsewhere.

    BentoML reads an unknown or text field as JSON: binary data there (`-F images=@bus.jpg`) was a
    500 (UnicodeDecodeError), and a second `image` part was silently ignored. A text field may come
    as a part with a file name (Swagger UI sends them so) if it holds UTF-8 text.
    """
    from _bentoml_sdk.typing_utils import is_list_type

    fields = cls.model_fields
    for name in form:
        if name not in fields:
            raise _validation_error(name, f"unknown field `{name}`; this route takes: {', '.join(fields)}")
        values = form.getlist(name)
        if name in cls.multipart_fields:
            if any(isinstance(v, str) for v in values):
                raise _validation_error(name, f"`{name}` must be an uploaded file; URLs and text are not accepted")
            if len(values) > 1 and not is_list_type(fields[name].annotation):
                raise _validation_error(name, f"{len(values)} `{name}` parts; send one per request")
            continue
        for value in values:
            if not isinstance(value, str) and not await _is_text(value):
                raise _validation_error(name, f"`{name}` is a text field; the part sent holds binary data")


async def _is_text(upload: Any) -> bool:
    data = await upload.read()
    await upload.seek(0)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _patch_multipart() -> None:
    """Multipart parsing that refuses URL strings in file fields, and malformed bodies, with a 400."""
    from _bentoml_impl.serde import MultipartSerde
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    original = MultipartSerde.parse_request
    if getattr(original, "__yolo_toys__", False):
        return

    async def parse_uploads_only(self: MultipartSerde, request: Any, cls: Any) -> Any:
        try:
            form = await request.form()
        except (MultiPartException, HTTPException, ValueError) as exc:
            detail = getattr(exc, "detail", exc)
            raise _validation_error("body", f"malformed multipart/form-data body: {detail}") from None
        await _check_form_fields(form, cls)
        return await original(self, request, cls)

    parse_uploads_only.__yolo_toys__ = True  # type: ignore[attr-defined]
    MultipartSerde.parse_request = parse_uploads_only  # type: ignore[method-assign]


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every rejected request body as an ERROR with a traceback; one INFO line is enough.

    A client that left mid-upload needs none: the access log's line (status 499) says it all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        from yolo_toys.guards import BodyTimeout, BodyTooLarge, ClientGone

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ClientGone):
            return False
        if isinstance(exc, (ValidationError, BodyTooLarge, BodyTimeout)):
            reason = exc.title if isinstance(exc, ValidationError) else str(exc)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "rejected %s: %s", (record.args[0] if record.args else "request", reason)
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_client_errors() -> None:
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorLogFilter) for f in logger.filters):
        logger.addFilter(ClientErrorLogFilter())


UNMATCHED = "unmatched"  # the one `endpoint` label of every path that is not a route
_REAL_PATH = "yolo_toys.path"


def route_templates(routes: Any, prefix: str = "") -> list[tuple[Any, str]]:
    """(path regex, label) of every route, mounts and included routers walked: `/models/{name}`,
    a static mount's path (`/demo`)."""
    from starlette.routing import Mount, compile_path

    found: list[tuple[Any, str]] = []
    for route in routes:
        path = prefix + getattr(route, "path", "")
        inner = getattr(route, "routes", None) or getattr(getattr(route, "original_router", None), "routes", None)
        if inner:
            found += route_templates(inner, path if isinstance(route, Mount) else prefix)
        elif isinstance(route, Mount) and path:
            found.append((compile_path(path + "/{path:path}")[0], path))
            found.append((compile_path(path)[0], path))
        elif hasattr(route, "path_regex"):
            found.append((compile_path(path or "/")[0], path or "/"))
    return found


def route_label(templates: list[tuple[Any, str]], path: str) -> str:
    return next((label for regex, label in templates if regex.match(path)), UNMATCHED)


class _RestorePath:
    """Gives the app behind the metrics middleware the request's real path back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if _REAL_PATH in scope:
            scope = {**scope, "path": scope[_REAL_PATH]}
            del scope[_REAL_PATH]
        await self.app(scope, receive, send)


def _patch_metrics_labels() -> None:
    """Label request metrics by route template, and every unknown path as one `unmatched`.

    BentoML labels them by the raw path: 3,000 random paths grew /metrics from 274 KB to 13 MB (a
    5.6 s scrape) and the front by 176 MB, and the series outlived a restart of the worker.
    """
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Metrics

    original = Metrics.__call__
    if getattr(original, "__yolo_toys__", False):
        return

    async def labelled(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not isinstance(self.app, _RestorePath):
            self.app = _RestorePath(self.app)
        router = getattr(scope.get("app"), "router", None)
        if scope["type"] not in ("http", "websocket") or router is None:
            await original(self, scope, receive, send)
            return
        if getattr(self, "_yolo_toys_routes", None) is None:
            self._yolo_toys_routes = route_templates(router.routes)
        label = route_label(self._yolo_toys_routes, scope["path"])
        if label != scope["path"]:
            scope = {**scope, "path": label, _REAL_PATH: scope["path"]}
        await original(self, scope, receive, send)

    labelled.__yolo_toys__ = True  # type: ignore[attr-defined]
    Metrics.__call__ = labelled  # type: ignore[method-assign]


def _patch_request_timeout() -> None:
    """BentoML's request timeout, with its timer cancelled when the request is answered.

    BentoML's leaves each request's timer armed for the whole `traffic.timeout` (120 s here), and the
    timer keeps a copy of the request's context (its OpenTelemetry span, ~4.5 KB): measured, the front
    grew by 14 MB per 3,000 GETs of /livez, for as long as the requests kept coming. Same semantics
    otherwise: 504 when no response byte has been sent within the timeout.
    """
    import contextvars

    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import JSONResponse

    if getattr(TimeoutMiddleware.__call__, "__yolo_toys__", False):
        return

    async def timed(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

        async def first_byte(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        app = asyncio.ensure_future(self.app(scope, receive, first_byte))
        try:
            await waiter
        except asyncio.TimeoutError:
            if app.cancel():
                message = {"error": "request timeout", "detail": f"not answered within {self.timeout} s"}
                await JSONResponse(message, status_code=504)(scope, receive, send)
            return
        finally:
            timer.cancel()
        await app

    timed.__yolo_toys__ = True  # type: ignore[attr-defined]
    TimeoutMiddleware.__call__ = timed  # type: ignore[method-assign]


WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        "file fields take uploads only: BentoML downloads a URL given as text (SSRF), and a bad one is a 500",
        "GHSA-mrmq-3q62-6cc8 (CVE-2025-54381) filters private addresses only; found here",
        "yolo_toys.workarounds._patch_multipart", _patch_multipart,
    ),
    Workaround(
        "a malformed multipart body is a 400, not a 500", "found here, not filed",
        "yolo_toys.workarounds._patch_multipart", _patch_multipart,
    ),
    Workaround(
        "a rejected request logs one INFO line, not an ERROR with a traceback", "found here, not filed",
        "yolo_toys.workarounds.ClientErrorLogFilter", _quiet_client_errors,
    ),
    Workaround(
        "request metrics are labelled by route, unknown paths under one label", "found here, not filed",
        "yolo_toys.workarounds._patch_metrics_labels", _patch_metrics_labels,
    ),
    Workaround(
        "a request's timeout timer is cancelled when the request is answered (it held the request's "
        "context for 120 s)", "found here, not filed",
        "yolo_toys.workarounds._patch_request_timeout", _patch_request_timeout,
    ),
    Workaround(
        "runner connections are never recycled while calls are in flight",
        "bentoml/BentoML#5540 (from 1.4.31, PR #5522)", "yolo_toys.workarounds.RUNNER_CONNECTION",
    ),
    Workaround(
        "a runner call whose pooled connection the runner closed (uvicorn keep-alive 5 s) is sent again once",
        "bentoml/BentoML#4971, PR #5698 (open)", "yolo_toys.front.Front.call_runner",
    ),
    Workaround(
        "runner answers state their media type, or BentoML rebuilds the answer's JSON schema per answer (~7 ms)",
        "found here, not filed", "runners.runner.PackedAnswers",
    ),
    Workaround(
        "adaptive batching by our own queue: the CorkDispatcher's learned wait holds lone requests after a burst",
        "found here, not filed", "runners.batcher.Batcher",
    ),
    Workaround(
        "our own Swagger page and /docs.json: BentoML's page loads a tag manager and badges from the internet, "
        "titles the API `yolo_toys:dev`, and declares error bodies it does not send",
        "bentoml/BentoML#4232", "yolo_toys.openapi",
    ),
    Workaround(
        "the upload field is declared as a PIL image so that BentoML makes the route multipart with a file picker, "
        "and validated to the raw bytes before BentoML would decode it",
        "found here, not filed", "yolo_toys.imaging.ImageUpload",
    ),
)


def install() -> None:
    """Apply the patches (idempotent) and say which workarounds to re-check on another BentoML."""
    import bentoml

    for workaround in WORKAROUNDS:
        if workaround.apply is not None:
            try:
                workaround.apply()
            except (ImportError, AttributeError) as exc:
                raise RuntimeError(f"workaround {workaround.name!r} no longer applies to BentoML "
                                   f"{bentoml.__version__}: {exc}") from exc  # fmt: skip
    if bentoml.__version__ != WRITTEN_FOR:
        for workaround in WORKAROUNDS:
            log.warning("BentoML %s, not %s: re-check %s (%s; %s)", bentoml.__version__, WRITTEN_FOR,
                        workaround.where, workaround.name, workaround.issue)  # fmt: skip
