"""The service's one error type, and the one place it becomes an HTTP answer.

Image checks, option checks, the runners, the body-limit guard, the WebSocket and the SSE route
all raise (or carry) a `ServiceError`. `response()` turns it into the JSON answer every route
declares in its OpenAPI entry; `body()` is the same `{"error", "detail"}` for a WebSocket message
or an SSE event, `json()` its bytes in a runner's answer (the same bytes as `response()`'s body).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import Response

from yolo_toys.schemas import Answer, ErrorBody

# What a client may see, by status: the OpenAPI entries of the routes are built from this table.
STATUSES: dict[int, str] = {
    400: "Bad request: no or broken image, malformed body, option out of range",
    401: "No or an invalid API key, when the server has keys (`YOLO_TOYS_API_KEYS`); no or an invalid admin key "
    "on a management route",
    403: "A browser origin outside the allow-list (`YOLO_TOYS_CORS_ORIGINS`); model management without admin keys "
    "configured (`YOLO_TOYS_ADMIN_KEYS`); a `.pt` upload while pickles are disabled",
    404: "Unknown model or version, or a model that is not loaded (`detail` says why)",
    405: "Method not allowed on this route",
    408: "The request body was not sent in time; the connection is closed",
    409: "A model of that name exists with another family or task",
    413: "Request body over the upload limit, an image over the pixel limit, more images than a `/batch` takes, "
    "or an artifact over its limit",
    415: "The file is not an image (or a model artifact) in a supported format, or the body is not a multipart form",
    422: "The model cannot serve these options: another task, unknown class ids, missing prompts, ...; an artifact "
    "of the wrong task or family, or that does not load",
    503: "A runner is starting, down or overloaded, or too many uploads are in progress; retry after `Retry-After`",
    504: "A management call's state was not reached within its `timeout_s` (it goes on; see GET /models/{name})",
}


# What a library's message may carry that a client must not see: object addresses (PIL: "cannot
# identify image file <_io.BytesIO object at 0x7f39...>") and paths of this host.
_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_HOST_PATH = re.compile(r"/(?:root|home|usr|tmp|opt|var|srv|work|app|proc|etc|lib)(?:/[^\s'\",;:()<>]+)+")


def redact(detail: Any) -> Any:
    """`detail` without object addresses or file paths, in strings, lists and dicts."""
    if isinstance(detail, str):
        return _HOST_PATH.sub("<path>", _ADDRESS.sub("in the upload", detail))
    if isinstance(detail, list):
        return [redact(item) for item in detail]
    if isinstance(detail, dict):
        return {key: redact(value) for key, value in detail.items()}
    return detail


class ServiceError(Exception):
    """A request the service answers with `status` and `{"error": ..., "detail": ...}`."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{error}: {detail}" if detail is not None else error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}

    @classmethod
    def retry_later(cls, error: str, detail: str, **headers: str) -> ServiceError:
        """A 503 with the service's `Retry-After` (YOLO_TOYS_RETRY_AFTER_S)."""
        from yolo_toys.settings import settings

        return cls(503, error, detail, headers={"Retry-After": str(settings().retry_after_s), **headers})

    @classmethod
    def from_body(cls, status: int, body: ErrorBody) -> ServiceError:
        return cls(status, body.error, body.detail)

    @classmethod
    def from_json(cls, status: int, body: bytes) -> ServiceError:
        """The error of a runner's answer (`json()`), raised again where a stream needs it."""
        return cls.from_body(status, ErrorBody.model_validate_json(body))

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.error, detail=redact(self.detail)).model_dump(mode="json")

    def json(self) -> bytes:
        """`body()` as compact JSON, as starlette's JSONResponse writes it."""
        return json.dumps(self.body(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    def answer(self) -> Answer:
        return Answer(self.status, self.json())

    def response(self) -> Response:
        return Response(self.json(), status_code=self.status, headers=self.headers, media_type="application/json")
