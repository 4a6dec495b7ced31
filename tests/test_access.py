"""Access control (yolo_toys/access.py): API keys, CORS and the WebSocket's Origin check.

The middleware alone over a small Starlette app (fast, every branch), then a real `bentoml serve`
started with keys and a CORS origin: nothing but the health probes answers without a key, both
header forms, the WebSocket's subprotocol and query forms, the SDK client's token, origins, and the
demo page in Chromium with a key. Last, the session's keyless server: everything stays open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import Server, bus_jpg, serving
from yolo_toys.access import KEY_PROTOCOL, PROTOCOL, SESSION_COOKIE, Access, normalize_origin, same_origin
from yolo_toys.settings import Settings

KEYS = ("k3y-one_Abc", "second-key-XYZ")
ALLOWED = "https://app.example.com"
EVIL = "https://evil.example.net"

# ---- the middleware alone ----------------------------------------------------------------------


async def _ok(request) -> JSONResponse:
    return JSONResponse({"path": request.url.path})


async def _socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def _app(keys=KEYS, origins=(ALLOWED,), open_paths=("/demo",)) -> Starlette:
    routes = [Route(p, _ok, methods=["GET", "POST"]) for p in ("/livez", "/readyz", "/healthz", "/models", "/detect",
                                                               "/metrics", "/demo", "/demo/demo.js", "/demos")]  # fmt: skip
    routes.append(WebSocketRoute("/ws/stream", _socket))
    app = Starlette(routes=routes)
    app.add_middleware(Access, keys=keys, origins=origins, open_paths=open_paths)
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(_app(), base_url="http://testserver") as c:
        yield c


def assert_refused(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == {401: "unauthorized", 403: "forbidden"}[status]
    assert not any(key in response.text for key in KEYS)
    return body


def test_settings_read_the_lists() -> None:
    env = {"YOLO_TOYS_API_KEYS": " a , b,,", "YOLO_TOYS_CORS_ORIGINS": ALLOWED, "YOLO_TOYS_OPEN_PATHS": "/metrics"}
    config = Settings.from_env(env)
    assert (config.api_keys, config.cors_origins, config.open_paths) == (("a", "b"), (ALLOWED,), ("/metrics",))
    assert "'a'" not in repr(config)
    assert Settings.from_env({}).api_keys == ()


def test_origins_compare_as_browsers_send_them() -> None:
    assert normalize_origin("HTTPS://App.Example.com:443/") == ALLOWED
    assert normalize_origin("null") == "null"
    assert same_origin("http://127.0.0.1:3000", "127.0.0.1:3000")
    assert same_origin("https://example.com", "example.com:443")
    assert not same_origin("http://127.0.0.1:3001", "127.0.0.1:3000")
    assert not same_origin("null", "127.0.0.1:3000")


def test_no_key_is_refused_with_the_error_body(client: TestClient) -> None:
    for method, path in [("GET", "/models"), ("POST", "/detect"), ("GET", "/metrics"), ("GET", "/demos"),
                         ("GET", "/nowhere"), ("OPTIONS", "/detect")]:  # fmt: skip
        response = client.request(method, path)
        body = assert_refused(response, 401)
        assert "Authorization: Bearer" in body["detail"]
        assert response.headers["www-authenticate"] == 'Bearer realm="yolo-toys"'


def test_wrong_key_is_refused_and_never_echoed(client: TestClient) -> None:
    for headers in ({"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, {"Authorization": f"Basic {KEYS[0]}"}):
        response = client.get("/models", headers=headers)
        body = assert_refused(response, 401)
        assert "nope" not in response.text
        if "X-API-Key" in headers or headers["Authorization"].startswith("Bearer"):
            assert body["detail"] == "the API key is not valid"
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert_refused(client.get("/models", params={"api_key": KEYS[0] + "x"}), 401)
    assert_refused(client.get("/models", headers={"X-API-Key": KEYS[0][:-1]}), 401)


def test_every_key_and_both_header_forms_pass(client: TestClient) -> None:
    for key in KEYS:
        assert client.get("/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/models", headers={"authorization": f"bearer {key}"}).status_code == 200
        assert client.post("/detect", headers={"X-API-Key": key}).status_code == 200


def test_health_probes_and_open_paths_need_no_key(client: TestClient) -> None:
    for path in ("/livez", "/readyz", "/healthz", "/demo", "/demo/demo.js"):
        assert client.get(path).status_code == 200, path
    assert client.get("/demos").status_code == 401  # a prefix opens what is under it, not its neighbours


def test_query_key_logs_a_page_in_with_a_cookie(client: TestClient) -> None:
    anonymous = TestClient(client.app, base_url="http://testserver")
    response = anonymous.get("/models", params={"api_key": KEYS[1]})
    assert response.status_code == 200
    cookie = response.cookies[SESSION_COOKIE]
    assert KEYS[1] not in response.headers["set-cookie"] and "HttpOnly" in response.headers["set-cookie"]
    assert "SameSite=Strict" in response.headers["set-cookie"]
    assert anonymous.get("/metrics").status_code == 200  # the cookie now
    assert anonymous.get("/metrics", headers={"Origin": "http://testserver"}).status_code == 200
    assert_refused(anonymous.get("/metrics", headers={"Origin": EVIL}), 401)  # never cross-origin
    anonymous.cookies.clear()
    anonymous.cookies.set(SESSION_COOKIE, cookie + "0")
    assert_refused(anonymous.get("/metrics"), 401)
    header_login = TestClient(client.app).get("/models", headers={"X-API-Key": KEYS[1]})
    assert "set-cookie" not in header_login.headers  # only a page load by query gets one


def test_cors_preflight_and_answers(client: TestClient) -> None:
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    allowed = client.options("/detect", headers={"Origin": ALLOWED, **ask})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "X-API-Key" in allowed.headers["access-control-allow-headers"]
    assert "POST" in allowed.headers["access-control-allow-methods"] and allowed.headers["vary"] == "Origin"
    refused = client.options("/detect", headers={"Origin": EVIL, **ask})
    assert_refused(refused, 403)
    assert "access-control-allow-origin" not in refused.headers
    answer = client.get("/models", headers={"Origin": ALLOWED, "X-API-Key": KEYS[0]})
    assert answer.headers["access-control-allow-origin"] == ALLOWED and "Origin" in answer.headers["vary"]
    denied = client.get("/models", headers={"Origin": ALLOWED})  # the page can read why
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ALLOWED
    other = client.get("/models", headers={"Origin": EVIL, "X-API-Key": KEYS[0]})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def _ws_refused(client: TestClient, status: int, **kwargs) -> dict:
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/ws/stream", **kwargs):
            pass
    assert refused.value.status_code == status
    body = json.loads(refused.value.content)
    assert set(body) == {"error", "detail"} and not any(key in body["detail"] for key in KEYS)
    return body


def test_websocket_keys(client: TestClient) -> None:
    _ws_refused(client, 401)
    _ws_refused(client, 401, headers={"X-API-Key": "nope"})
    _ws_refused(client, 401, subprotocols=[PROTOCOL, KEY_PROTOCOL + "nope"])
    with client.websocket_connect("/ws/stream", subprotocols=[PROTOCOL, KEY_PROTOCOL + KEYS[0]]) as ws:
        assert ws.accepted_subprotocol == PROTOCOL  # selected, so a browser accepts; never the key's
        assert ws.receive_text() == "hello"
    for path, headers in [
        ("/ws/stream", {"Authorization": f"Bearer {KEYS[1]}"}),
        (f"/ws/stream?api_key={KEYS[1]}", {}),
    ]:
        with client.websocket_connect(path, headers=headers) as ws:
            assert ws.accepted_subprotocol is None and ws.receive_text() == "hello"


def test_websocket_origins(client: TestClient) -> None:
    key = {"X-API-Key": KEYS[0]}
    body = _ws_refused(client, 403, headers={"Origin": EVIL, **key})
    assert EVIL in body["detail"]
    _ws_refused(client, 403, headers={"Origin": "null", **key})
    _ws_refused(client, 403, headers={"Origin": EVIL})  # the origin is judged first
    for origin in (ALLOWED, "http://testserver"):
        with client.websocket_connect("/ws/stream", headers={"Origin": origin, **key}) as ws:
            assert ws.receive_text() == "hello"


def test_without_keys_only_the_origin_check_applies() -> None:
    with TestClient(_app(keys=(), origins=(), open_paths=())) as open_client:
        for path in ("/models", "/metrics", "/demos"):
            response = open_client.get(path, headers={"Origin": EVIL})
            assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
            assert "vary" not in response.headers
        preflight = {"Origin": EVIL, "Access-Control-Request-Method": "POST"}
        assert_refused(open_client.options("/detect", headers=preflight), 403)
        with open_client.websocket_connect("/ws/stream", subprotocols=[PROTOCOL]) as ws:
            assert ws.accepted_subprotocol == PROTOCOL and ws.receive_text() == "hello"
        _ws_refused(open_client, 403, headers={"Origin": EVIL})


# ---- a real `bentoml serve` with keys and a CORS origin ------------------------------------------

KEY = KEYS[0]
HEALTH = ("/livez", "/readyz", "/healthz")
PAGES = ("/", "/demo", "/demo/", "/demo/demo.js", "/docs.json", "/schema.json", "/metrics", "/models",
         "/models/yolo11n", "/static_content/swagger-ui.css", "/nowhere")  # fmt: skip


@pytest.fixture(scope="module")
def keyed(test_env: dict[str, str], imported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service with two keys, one allowed origin, and only yolo11n (one runner: a quick start)."""
    folder = tmp_path_factory.mktemp("keyed")
    catalog = yaml.safe_load(Path(test_env["YOLO_TOYS_CATALOG"]).read_text())
    catalog["runners"] = {"ultralytics": catalog["runners"]["ultralytics"]}
    catalog["models"] = [m for m in catalog["models"] if m["name"] == "yolo11n"]
    (folder / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    env = {**test_env, "YOLO_TOYS_API_KEYS": ",".join(KEYS), "YOLO_TOYS_CORS_ORIGINS": ALLOWED,
           "YOLO_TOYS_CATALOG": str(folder / "catalog.yaml")}  # fmt: skip
    with serving(env, folder / "serve.log") as srv:
        yield srv


def _routes(server: Server) -> list[tuple[str, str]]:
    """Every operation of the served OpenAPI document, path parameters filled in."""
    spec = httpx.get(f"{server.url}/docs.json", headers={"X-API-Key": KEY}, timeout=30).json()
    return [(method.upper(), path.replace("{name}", "yolo11n")) for path, ops in spec["paths"].items() for method in ops
            if path not in HEALTH]  # fmt: skip


def _ws(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/stream"


def _ws_status(url: str, **kwargs) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, open_timeout=60, **kwargs):
            pass
    return refused.value.response.status_code, json.loads(refused.value.response.body)


def _stream_one_frame(url: str, **kwargs) -> str | None:
    """One frame through the stream: its result, and the subprotocol the server selected."""
    with connect(url, max_size=None, open_timeout=60, **kwargs) as ws:
        ws.send(json.dumps({"type": "config", "model": "yolo11n"}))
        assert json.loads(ws.recv(timeout=60))["type"] == "config"
        ws.send(bus_jpg())
        message = json.loads(ws.recv(timeout=120))
        assert message["type"] == "result" and "bus" in {d["label"] for d in message["result"]["detections"]}, message
        return ws.subprotocol


@pytest.mark.serve
def test_nothing_but_the_health_probes_answers_without_a_key(keyed: Server) -> None:
    routes = _routes(keyed)
    assert {("POST", "/detect"), ("GET", "/models"), ("GET", "/metrics")} <= set(routes), routes
    for method, path in [*routes, *(("GET", p) for p in PAGES)]:
        response = httpx.request(method, f"{keyed.url}{path}", timeout=30)
        if method == "POST" and path.startswith("/models"):  # model management: no admin keys on this server
            assert response.status_code == 403 and response.json()["error"] == "model management disabled", path
            continue
        body = assert_refused(response, 401)
        assert "Authorization: Bearer" in body["detail"], (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
    for path in HEALTH:
        assert httpx.get(f"{keyed.url}{path}", timeout=30).status_code == 200, path
    status, body = _ws_status(_ws(keyed))
    assert status == 401 and body["error"] == "unauthorized"


@pytest.mark.serve
def test_a_wrong_key_is_refused(keyed: Server) -> None:
    for path in ("/detect", "/metrics", "/models"):
        for headers in ({"Authorization": "Bearer wrong-key"}, {"X-API-Key": KEY + "x"}):
            response = httpx.request("POST" if path == "/detect" else "GET", f"{keyed.url}{path}", headers=headers,
                                     files={"image": ("bus.jpg", b"x")} if path == "/detect" else None, timeout=30)  # fmt: skip
            assert assert_refused(response, 401)["detail"] == "the API key is not valid"
    for kwargs in (
        {"additional_headers": {"X-API-Key": "wrong"}},
        {"subprotocols": [PROTOCOL, KEY_PROTOCOL + "wrong"]},
    ):
        assert _ws_status(_ws(keyed), **kwargs)[0] == 401


@pytest.mark.serve
def test_a_key_opens_every_route_in_both_header_forms(keyed: Server, tmp_path: Path) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEYS[1]}):
        detected = httpx.post(
            f"{keyed.url}/detect", files={"image": ("bus.jpg", bus_jpg())}, headers=headers, timeout=120
        )
        assert detected.status_code == 200 and "bus" in detected.text
        for path in PAGES[:-1]:
            response = httpx.get(f"{keyed.url}{path}", headers=headers, timeout=30, follow_redirects=True)
            assert response.status_code == 200, path
    import bentoml

    photo = tmp_path / "bus.jpg"
    photo.write_bytes(bus_jpg())
    with bentoml.SyncHTTPClient(keyed.url, token=KEY, timeout=120) as client:  # sends Authorization: Bearer
        assert "bus" in {d["label"] for d in client.detect(image=photo)["detections"]}


@pytest.mark.serve
def test_websocket_key_forms_and_origins(keyed: Server) -> None:
    url = _ws(keyed)
    assert _stream_one_frame(url, additional_headers={"Authorization": f"Bearer {KEY}"}) is None
    assert _stream_one_frame(url, subprotocols=[PROTOCOL, KEY_PROTOCOL + KEYS[1]]) == PROTOCOL
    assert _stream_one_frame(f"{url}?api_key={KEY}") is None
    assert _stream_one_frame(url, origin=ALLOWED, additional_headers={"X-API-Key": KEY}) is None
    assert _stream_one_frame(url, origin=keyed.url, additional_headers={"X-API-Key": KEY}) is None
    status, body = _ws_status(url, origin=EVIL, additional_headers={"X-API-Key": KEY})
    assert status == 403 and body["error"] == "forbidden" and EVIL in body["detail"]


@pytest.mark.serve
def test_cors_and_the_page_cookie(keyed: Server) -> None:
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{keyed.url}/detect", headers={"Origin": ALLOWED, **ask}, timeout=30)
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "Authorization" in allowed.headers["access-control-allow-headers"]
    refused = httpx.options(f"{keyed.url}/detect", headers={"Origin": EVIL, **ask}, timeout=30)
    assert_refused(refused, 403)
    assert "access-control-allow-origin" not in refused.headers
    answer = httpx.get(f"{keyed.url}/models", headers={"Origin": ALLOWED, "X-API-Key": KEY}, timeout=30)
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    with httpx.Client(base_url=keyed.url, timeout=30) as browser_like:
        page = browser_like.get("/demo/", params={"api_key": KEY})
        assert page.status_code == 200 and KEY not in page.headers["set-cookie"]
        assert browser_like.get("/demo/demo.js").status_code == 200  # the page's own files: the cookie
        assert browser_like.get("/models").status_code == 200


@pytest.mark.serve
def test_the_demo_streams_with_a_key(keyed: Server, tmp_path: Path) -> None:
    """`/demo?api_key=...`: the key moves to sessionStorage, leaves the address bar, and the page
    streams with it as X-API-Key and WebSocket subprotocol alone (the cookie is dropped first)."""
    from playwright.sync_api import sync_playwright

    from test_demo import CHROMIUM, TIMEOUT_MS, chromium_args, write_fake_camera

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium package")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=chromium_args(write_fake_camera(tmp_path / "camera.y4m")))  # fmt: skip
        try:
            context = browser.new_context()
            page = context.new_page()
            assert page.goto(f"{keyed.url}/demo").status == 401
            assert page.goto(f"{keyed.url}/demo?api_key={KEY}").ok
            page.wait_for_selector('[data-testid="model-select"] option[value="yolo11n"]', state="attached")
            seen = page.evaluate("() => [location.search, sessionStorage.getItem('yolo-toys.api-key')]")
            assert seen == ["", KEY] and page.is_visible('[data-testid="api-key-input"]')
            context.clear_cookies()
            page.select_option('[data-testid="source-select"]', "webcam")
            page.click('[data-testid="start-button"]')
            page.wait_for_function("() => window.demoStats.results >= 2", timeout=TIMEOUT_MS)
            stats = page.evaluate("() => ({protocol: demoStats.protocol, errors: demoStats.errors})")
            page.click('[data-testid="start-button"]')
            page.fill('[data-testid="api-key-input"]', "wrong")
            page.dispatch_event('[data-testid="api-key-input"]', "change")
            page.wait_for_function("() => demoStats.errors.some((e) => e.includes('API key was refused'))")
        finally:
            browser.close()
    assert stats == {"protocol": PROTOCOL, "errors": []}


# ---- without keys (the session's server): everything stays open ---------------------------------


@pytest.mark.serve
def test_without_keys_everything_is_open(server: Server) -> None:
    for path in (*PAGES[:-1], *HEALTH):
        response = httpx.get(f"{server.url}{path}", timeout=30, follow_redirects=True)
        assert response.status_code == 200, path
        assert "access-control-allow-origin" not in response.headers and "vary" not in response.headers
    assert httpx.post(f"{server.url}/classify", files={"image": ("bus.jpg", bus_jpg())}, timeout=120).status_code == 200
    with connect(_ws(server), origin=server.url, open_timeout=60) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=60))["type"] == "pong"
    assert _ws_status(_ws(server), origin=EVIL)[0] == 403  # the Origin check holds without keys too


@pytest.mark.serve
def test_the_stream_client_sends_its_key(keyed: Server, tmp_path: Path) -> None:
    from test_stream import make_video
    from yolo_toys.stream_client import stream

    video = tmp_path / "clip.avi"
    make_video(video, n=3)
    messages = list(stream(str(video), _ws(keyed), {"task": "detect", "model": "yolo11n"}, linger=30, api_key=KEY))
    assert messages[0]["type"] == "config" and any(m.get("type") == "result" for m in messages), messages[:3]
    with pytest.raises(InvalidStatus):
        list(stream(str(video), _ws(keyed), {"task": "detect"}, api_key="wrong"))
