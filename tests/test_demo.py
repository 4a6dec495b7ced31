"""End-to-end test of the live web demo (`GET /demo`) in headless Chromium.

Chromium's fake camera plays a Y4M clip panning over Ultralytics' bus photo; the page streams the
frames to `WS /ws/stream` of a real `bentoml serve` and draws the detections. Needs Debian's
`chromium` package (`/usr/bin/chromium`) and the `playwright` Python package: `make test` installs both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, bus_jpg

pytestmark = pytest.mark.serve

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
WIDTH, HEIGHT, FRAMES, FPS = 640, 480, 20, 10
TIMEOUT_MS = 60_000


def write_fake_camera(path: Path) -> Path:
    """A Y4M (YUV4MPEG2, 4:2:0) clip: a 640x480 window panning slowly over bus.jpg."""
    from ultralytics.utils import ASSETS

    photo = cv2.imread(str(ASSETS / "bus.jpg"))
    assert photo is not None, "cannot read ultralytics' bus.jpg"
    scale = 700 / photo.shape[1]  # 810x1080 -> 700x933: the bus and the people fill the window
    photo = cv2.resize(photo, (700, round(photo.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    top = 260
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(FRAMES):
            left = round(i * (photo.shape[1] - WIDTH) / (FRAMES - 1))
            crop = np.ascontiguousarray(photo[top : top + HEIGHT, left : left + WIDTH])
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(crop, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def chromium_args(camera: Path | None) -> list[str]:
    fake_camera = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    return [
        "--no-sandbox",
        "--disable-gpu",
        *(fake_camera if camera is not None else []),
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]


def run_demo(base_url: str, tmp_path: Path) -> dict:
    """Drive the demo page against `base_url`; returns what it observed. Asserts along the way."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium package")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: run `make test`, which installs requirements-dev.txt")

    camera = write_fake_camera(tmp_path / "camera.y4m")
    console_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=chromium_args(camera))
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: console_errors.append(f"uncaught: {exc}"))

            response = page.goto(f"{base_url}/demo", wait_until="load")
            assert response is not None and response.ok, f"GET /demo: {response and response.status}"
            page.wait_for_selector('[data-testid="model-select"] option[value="yolo11n"]', state="attached")
            page.select_option('[data-testid="source-select"]', "webcam")
            page.select_option('[data-testid="task-select"]', "detect")
            page.select_option('[data-testid="model-select"]', "yolo11n")
            page.click('[data-testid="start-button"]')

            page.wait_for_function(
                "() => window.demoStats.results >= 3 && window.demoStats.boxesDrawn > 0", timeout=TIMEOUT_MS
            )
            stats = page.evaluate(
                """() => {
                    const s = window.demoStats;
                    return {results: s.results, boxesDrawn: s.boxesDrawn, lastResult: s.lastResult,
                            lastMessage: s.lastMessage, errors: s.errors, connected: s.connected,
                            labels: s.labels, config: s.config, sent: s.sent};
                }"""
            )
            drawn_pixels = page.evaluate(
                """() => {
                    const c = document.querySelector('[data-testid="overlay"]');
                    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
                    return n;
                }"""
            )
            shown_results = int(page.inner_text('[data-testid="stat-results"]'))
            screenshot = tmp_path / "demo.png"
            page.screenshot(path=str(screenshot))
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copyfile(screenshot, ARTIFACTS / "demo.png")

            page.click('[data-testid="start-button"]')  # stop: closes the stream cleanly
            page.wait_for_function("() => !window.demoStats.connected", timeout=10_000)
        finally:
            browser.close()

    stats["drawn_pixels"] = drawn_pixels
    stats["shown_results"] = shown_results
    stats["console_errors"] = console_errors
    return stats


def test_demo_streams_webcam_and_draws_detections(server, tmp_path: Path) -> None:
    stats = run_demo(server.url, tmp_path)
    assert stats["errors"] == [], stats["errors"]
    assert stats["results"] >= 3 and stats["shown_results"] >= 3
    assert stats["boxesDrawn"] > 0
    result = stats["lastResult"]
    assert result["task"] == "detect" and result["model"] == "yolo11n", result
    assert (result["image"]["width"], result["image"]["height"]) == (WIDTH, HEIGHT)
    assert {"bus", "person"} & set(stats["labels"]), stats["labels"]
    message = stats["lastMessage"]
    assert message["type"] == "result" and isinstance(message["frame_id"], int)
    assert message["server_ms"] >= 0 and message["dropped"] >= 0
    assert stats["drawn_pixels"] > 1000, "nothing drawn on the overlay canvas"
    assert stats["console_errors"] == [], stats["console_errors"]


def test_swagger_first_screen_is_yolo_toys_and_stays_on_the_server(server, tmp_path: Path) -> None:
    """`/` is the product's page: its title and version, no request outside the server, optional form
    fields empty (not the text "null"), and `/annotate`'s task preselected."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=chromium_args(None))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"{server.url}/", wait_until="networkidle")
            title = page.wait_for_selector(".swagger-ui .info .title", timeout=TIMEOUT_MS).inner_text()
            annotate = page.locator("#operations-Service_APIs-yolo_toys__annotate")
            annotate.locator(".opblock-summary").click()
            annotate.locator("button.try-out__btn").click()
            task = annotate.locator('tr[data-property-name="task"] select').input_value()
            values = annotate.locator("input[type=text], textarea").evaluate_all("els => els.map(e => e.value)")
            # The form as it stands, with a photo: Swagger UI sends the empty optional fields too.
            photo = tmp_path / "bus.jpg"
            photo.write_bytes(bus_jpg())
            annotate.locator('tr[data-property-name="image"] input[type=file]').set_input_files(str(photo))
            annotate.locator("button.execute").click()
            status = annotate.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=TIMEOUT_MS)
            answered = status.inner_text().strip()
            page.screenshot(path=str(tmp_path / "swagger.png"), full_page=False)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copyfile(tmp_path / "swagger.png", ARTIFACTS / "swagger.png")
        finally:
            browser.close()
    assert title.startswith("YOLO-Toys") and "0.2.0" in title, title
    outside = [url for url in requests if not url.startswith((server.url, "data:", "blob:"))]
    assert outside == [], outside
    assert task == "detect"
    assert values and "null" not in values, values
    assert answered == "200"
