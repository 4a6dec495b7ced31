"""The service's one error type, and the one place it becomes an HTTP answer.

Image checks, option checks, the runners, the body-limit guard, the WebSocket and the SSE route
all raise (or carry) a `ServiceError`. `response()` turns it into the JSON answer every route
declares in its OpenAPI entry; `body()` is the same `{"error", "detail"}` for a WebSocket message,
an SSE event or a runner's answer.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from yolo_toys.schemas import ErrorBody

# What a client may see, by status: the OpenAPI entries of the routes are built from this table.
STATUSES: dict[int, str] = {
    400: "Bad request: no or broken image, malformed body, option out of range",
    404: "Unknown model, or a model that is not loaded (`detail` says why)",
    405: "Method not allowed on this route",
    413: "Request body over the upload limit, or an image over the pixel limit",
    415: "The file is not an image in a supported format",
    422: "The model cannot serve these options: another task, unknown class ids, missing prompts, ...",
    503: "A runner is overloaded or unreachable; retry later",
}


class ServiceError(Exception):
    """A request the service answers with `status` and `{"error": ..., "detail": ...}`."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{error}: {detail}" if detail is not None else error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}

    @classmethod
    def from_body(cls, status: int, body: ErrorBody) -> ServiceError:
        return cls(status, body.error, body.detail)

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.error, detail=self.detail).model_dump(mode="json")

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)
