"""The OpenAPI document against the real service: Swagger's first screen, declared errors, and
schemathesis finding no server error and no answer that contradicts the document."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Server

pytestmark = pytest.mark.serve

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]  # fmt: skip
ST = str(Path(sys.executable).parent / "st")


def spec(server: Server) -> dict:
    return httpx.get(f"{server.url}/docs.json", timeout=30).json()


def test_the_document_describes_yolo_toys(server: Server) -> None:
    doc = spec(server)
    assert doc["info"]["title"] == "YOLO-Toys" and doc["info"]["version"] not in ("None", "", None)
    description = doc["info"]["description"]
    assert "/models" in description and "/demo" in description and '{"error"' in description
    assert "bentoml" not in description.lower() and "http" not in description  # no badges, no outside links


def test_every_route_declares_its_error_answers(server: Server) -> None:
    doc = spec(server)
    for route in ("/detect", "/segment", "/pose", "/classify", "/obb", "/zero_shot_classify", "/caption", "/vqa",
                  "/depth", "/annotate", "/batch", "/stream/video"):  # fmt: skip
        responses = doc["paths"][route]["post"]["responses"]
        assert {"200", "400", "404", "413", "422", "503"} <= set(responses), route
        assert "500" not in responses, route
        for status, answer in responses.items():
            if status != "200":
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(doc["paths"]["/stream/video"]["post"]["responses"]["200"]["content"]) == {"text/event-stream"}
    assert set(doc["paths"]["/annotate"]["post"]["responses"]["200"]["content"]) == {"image/jpeg"}
    assert "404" in doc["paths"]["/models/{name}"]["get"]["responses"]
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"error", "detail"}


def test_the_forms_show_no_null_and_preselect_the_task(server: Server) -> None:
    doc = spec(server)
    for path, item in doc["paths"].items():
        for operation in item.values():
            for kind, media in operation.get("requestBody", {}).get("content", {}).items():
                if kind != "multipart/form-data":
                    continue
                fields = media["schema"]["properties"]
                assert all(field.get("default", "") is not None for field in fields.values()), path
                first = next(iter(fields.values()))
                files = first.get("items", first)  # a list of files (`images` of /batch) or one file
                assert files.get("format") == "binary", f"{path}: the file field comes first"
    task = doc["paths"]["/annotate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["task"]
    assert task["default"] == "detect" and "detect" in task["enum"] and "$ref" not in task


def test_framework_answers_carry_the_error_body(server: Server) -> None:
    missing = httpx.get(f"{server.url}/no/such/route", timeout=30)
    assert missing.status_code == 404 and set(missing.json()) == {"error", "detail"}
    wrong = httpx.get(f"{server.url}/detect", timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method not allowed"
    assert wrong.headers["allow"] == "POST"
    models = httpx.delete(f"{server.url}/models", timeout=30)
    assert models.status_code == 405 and set(models.json()) == {"error", "detail"}
    unknown = httpx.get(f"{server.url}/models/no-such-model", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown model"


def schemathesis_run(server: Server, cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`st run` against the served document with the checks above; the report when it finds anything."""
    done = subprocess.run(
        [ST, "run", f"{server.url}/docs.json", "--checks", ",".join(c.__name__ for c in CHECKS), "--seed", "20261202",
         "--workers", "1", "--generation-database", "none", "--request-timeout", "120", "--no-color",
         "--output-truncate", "false", *args],
        capture_output=True, text=True, timeout=900, cwd=cwd, env=env,
    )  # fmt: skip
    (cwd / "schemathesis.txt").write_text(done.stdout)
    failures = done.stdout[done.stdout.find("FAILURES") :]
    assert done.returncode == 0, failures[:12000] + done.stderr[-2000:]
    return done.stdout


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    """Every operation; examples, boundary values and random forms, 12 cases each (about 1,000 requests)."""
    report = schemathesis_run(server, tmp_path, "--phases", "examples,coverage,fuzzing", "--max-examples", "12")
    assert "Tested: 23" in report and " passed" in report


def test_schemathesis_with_a_real_photo(server: Server, tmp_path: Path) -> None:
    """Valid forms around a real photo, the model left to the task's default (tests/schemathesis_photo.py):
    the runners meet every option value the document allows, and answer a result or a declared error."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_photo",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    routes = "|".join(r.strip("/") for r in IMAGE_ROUTES)
    report = schemathesis_run(server, tmp_path, "--phases", "examples,fuzzing", "--mode", "positive",
                              "--max-examples", "8", "--include-path-regex", f"^/({routes})$", env=env)  # fmt: skip
    assert f"Tested: {len(IMAGE_ROUTES)}" in report


IMAGE_ROUTES = ("/detect", "/segment", "/pose", "/classify", "/obb", "/zero_shot_classify", "/caption", "/vqa",
                "/depth", "/annotate", "/batch")  # fmt: skip
