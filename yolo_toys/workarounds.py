"""Every place YOLO-Toys works around BentoML, with the version it was measured on and its upstream issue.

Nothing here runs at import. `install()` runs at start-up in each service process: it applies the
patches and checks the installed BentoML against the version each workaround was written for; on
another version it logs one warning per workaround to re-check, and a patch whose target is gone
stops the start-up instead of failing later. The other entries are settings or code elsewhere
(named in `where`); they are listed so that one file tells what to re-check on an upgrade.
"""

from __future__ import annotations

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
        for name in cls.multipart_fields:
            for value in form.getlist(name):
                if isinstance(value, str):
                    raise _validation_error(name, f"`{name}` must be an uploaded file; URLs and text are not accepted")
        return await original(self, request, cls)

    parse_uploads_only.__yolo_toys__ = True  # type: ignore[attr-defined]
    MultipartSerde.parse_request = parse_uploads_only  # type: ignore[method-assign]


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every rejected request body as an ERROR with a traceback; one INFO line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        from yolo_toys.guards import BodyTooLarge

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ValidationError, BodyTooLarge)):
            reason = exc.title if isinstance(exc, ValidationError) else "request body over the size limit"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "rejected %s: %s", (record.args[0] if record.args else "request", reason)
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_client_errors() -> None:
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorLogFilter) for f in logger.filters):
        logger.addFilter(ClientErrorLogFilter())


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
        "runner connections are never recycled while calls are in flight",
        "bentoml/BentoML#5540 (from 1.4.31, PR #5522)", "yolo_toys.workarounds.RUNNER_CONNECTION",
    ),
    Workaround(
        "a runner call whose pooled connection the runner closed (uvicorn keep-alive 5 s) is sent again once",
        "bentoml/BentoML#4971, PR #5698 (open)", "yolo_toys.front.Front.call_runner",
    ),
    Workaround(
        "runner answers state their media type, or BentoML rebuilds the list's JSON schema per answer (~7 ms)",
        "found here, not filed", "runners.runner.Outcomes",
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
