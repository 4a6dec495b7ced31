"""The API's Swagger page (`/`) and OpenAPI document (`/docs.json`), finished from BentoML's.

BentoML 1.4.39's page loads a tag manager and badge images from the internet and shows its
placeholder README under the title `yolo_toys:dev`, version `None`; its document declares error
bodies the routes never send (bentoml/BentoML#4232), `null` defaults that Swagger UI fills into the
form as the text "null", and a text/plain answer for the SSE route. Here each route declares the
`{"error", "detail"}` answers it can give (yolo_toys/errors.py), and the page is served from the
server alone.
"""

from __future__ import annotations

import copy
import inspect
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema
from starlette.responses import HTMLResponse

from yolo_toys import __version__
from yolo_toys.errors import STATUSES
from yolo_toys.schemas import BatchResult, ErrorBody, VideoEvent
from yolo_toys.tasks import TASKS

INTRO = """\
**One API for vision models of several families**: Ultralytics YOLO (detect, segment, pose, classify,
oriented boxes) and Hugging Face transformers (detection, open-vocabulary detection, classification,
zero-shot classification, captioning, visual question answering, depth, semantic segmentation).
Each task answers one result schema, whichever family serves it: switch models with `model=` alone.

- [`GET /models`](./models): what is loaded, per task and family; labels at `GET /models/{name}`.
- [`/demo`](./demo/): the live web demo (webcam or video file over `WS /ws/stream`).
- `POST /batch`: several images in one request (and one adaptive batch), a result or an error each.
- `POST /stream/video`: per-frame results of a video as server-sent events.
- [`/docs.json`](./docs.json): this OpenAPI document. `/metrics`: Prometheus.

**Errors.** Every rejected request gets a 4xx (503 when a runner is overloaded or unreachable) with
one JSON object `{"error": "<what went wrong>", "detail": <specifics>}`: 400 a broken image or
option, 404 an unknown or unloaded model, 413 over a size limit, 415 not an image, 422 a model
that cannot serve the options.
"""

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
IMAGE_ROUTE_ERRORS = (400, 401, 404, 408, 413, 415, 422, 503)
# Routes that are not image routes, and the errors they can give.
ROUTE_ERRORS: dict[str, tuple[int, ...]] = {
    "/stream/video": (400, 401, 404, 408, 413, 415, 422, 503), "/models": (401, 503), "/models/{name}": (401, 404, 503),
}

# The 200 answer of each route that answers JSON built in the runners (BentoML's document does not know them).
RESULTS: dict[str, type[BaseModel]] = {**{f"/{task.value}": spec.result for task, spec in TASKS.items()},
                                       "/batch": BatchResult}  # fmt: skip

PAGE = """\
<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>YOLO-Toys API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <style>body { margin: 0; background: #fafafa; } .swagger-ui .topbar { display: none; }</style>
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script>
      window.onload = () => {
        window.ui = SwaggerUIBundle({
          url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
        });
      };
    </script>
  </body>
</html>
"""


def page() -> HTMLResponse:
    """Swagger UI from BentoML's bundled assets, with nothing fetched from outside the server."""
    return HTMLResponse(PAGE)


def _error_responses(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {str(s): {"description": STATUSES[s], "content": {"application/json": {"schema": ERROR_REF}}} for s in statuses}


def _tidy_field(field: dict[str, Any], required: bool, schemas: dict[str, Any]) -> None:
    """No `null` default (Swagger UI would send the text "null"); an enum inlined with its default
    (so that Swagger UI preselects it); `example` in place of `examples`, for required fields only."""
    if "$ref" in field:
        default = field.get("default")
        referenced = copy.deepcopy(schemas[field.pop("$ref").rsplit("/", 1)[-1]])
        field.update(referenced)
        if default is not None:
            field["default"] = default
    if "default" in field and field["default"] is None:
        del field["default"]
    examples = field.pop("examples", None)
    if examples and required:
        field["example"] = examples[0]


def _tidy_form(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Each field tidied, and the file fields first."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        required = set(media["schema"].get("required", ()))
        properties = media["schema"].get("properties", {})
        for name, field in properties.items():
            _tidy_field(field, name in required, schemas)
        files = [name for name, field in properties.items() if "binary" in (field.get("format"), field.get("items", {}).get("format"))]
        media["schema"]["properties"] = {name: properties[name] for name in [*files, *properties] if name in properties}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, {type: null}]` (pydantic's `X | None`) as OpenAPI 3.0 writes it: X with `nullable: true`."""
    rest = [s for s in schema["anyOf"] if s != {"type": "null"}]
    if len(rest) == len(schema["anyOf"]):
        return schema
    merged = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(rest) > 1:
        merged["anyOf"] = rest
    else:
        merged.update({"allOf": rest} if "$ref" in rest[0] else rest[0])
    return {**merged, "nullable": True}


def _as_openapi30(schema: Any) -> Any:
    """OpenAPI 3.0 has no `const` and no `null` type (pydantic writes both): `enum: [x]` and `nullable`.

    A validator of 3.0 ignores `const`, and then cannot tell the task results apart by `task`.
    """
    if isinstance(schema, list):
        return [_as_openapi30(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    fixed = {k: _as_openapi30(v) for k, v in schema.items()}
    if "const" in fixed:
        fixed["enum"] = [fixed.pop("const")]
    return _nullable(fixed) if isinstance(fixed.get("anyOf"), list) else fixed


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with every `$ref` into `defs` replaced by its target: an event's data schema must stand alone."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k not in ("$defs", "discriminator")}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


def _event_schema() -> dict[str, Any]:
    """One server-sent event of `/stream/video` (before OpenAPI 3.2, an event stream's schema is one event's)."""
    data = TypeAdapter(VideoEvent).json_schema()
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["result", "error", "end"]},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": _inlined(data, data.get("$defs", {}))},
        },
    }  # fmt: skip


def _components(models: list[type[BaseModel]]) -> dict[str, Any]:
    """The models' JSON schemas as OpenAPI components (BentoML's flattening turns `X | None` into `X`)."""
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template="#/components/schemas/{model}")
    return top["$defs"]


def _ok(path: str, operation: dict[str, Any]) -> dict[str, Any]:
    """The 200 answer: a task route's result schema by reference, or what BentoML wrote."""
    result = RESULTS.get(path)
    if result is None:
        return {str(k): v for k, v in operation["responses"].items()}["200"]
    return {"description": inspect.cleandoc(result.__doc__ or "The task's result"),
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{result.__name__}"}}}}  # fmt: skip


def finish(doc: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document, made to say what the service does."""
    doc["info"] = {"title": "YOLO-Toys", "version": __version__, "description": INTRO}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_components([ErrorBody, *RESULTS.values()]))
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if "x-bentoml-name" in operation or (method == "get" and path in ROUTE_ERRORS):
                errors = ROUTE_ERRORS.get(path, IMAGE_ROUTE_ERRORS)
                operation["responses"] = {"200": _ok(path, operation), **_error_responses(errors)}
                _tidy_form(operation, schemas)
            elif "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):  # POST /models
                media = operation["requestBody"]["content"]["multipart/form-data"]
                media["schema"] = form = dict(schemas[media["schema"]["$ref"].rsplit("/", 1)[1]])
                form["properties"] = {name: {k: v for k, v in field.items() if k != "contentMediaType"} | {"format": "binary"}
                                      if "contentMediaType" in field else field for name, field in form["properties"].items()}  # fmt: skip
                _tidy_form(operation, schemas)
    doc["paths"]["/stream/video"]["post"]["responses"]["200"]["content"] = {"text/event-stream": {"schema": _event_schema()}}
    return _as_openapi30(doc)


@lru_cache(maxsize=1)
def _cached(service: Any) -> dict[str, Any]:
    return finish(service.openapi_spec.asdict())


def document(service: Any) -> dict[str, Any]:
    """The finished document of `service` (the front's `bentoml.Service`), built once."""
    return _cached(service)
