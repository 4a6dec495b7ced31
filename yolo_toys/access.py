"""Access control a deployment turns on: API keys, a CORS allow-list, and the WebSocket's Origin check.

One ASGI middleware, outermost of the service's own, so that a refused request costs nothing else
(not even the body-size check). Settings are read once (yolo_toys/settings.py):

- `YOLO_TOYS_API_KEYS` (comma-separated; empty: no key needed). With keys, every path needs one but
  the health probes and `YOLO_TOYS_OPEN_PATHS`: the API, `/metrics`, `/docs.json`, the Swagger
  page, the demo. A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`; a browser,
  which cannot set headers on a WebSocket or a page load, offers the subprotocols `yolo-toys` and
  `yolo-toys.key.<key>` or adds `?api_key=<key>`. A page loaded with `?api_key=` also gets a session
  cookie (an HMAC of the key, never the key), so that its scripts, styles and same-origin calls pass.
- `YOLO_TOYS_ADMIN_KEYS`: the keys of the model-management routes (every POST under `/models`), sent
  in a header only. Without any, those routes answer 403; with some, 401 without a valid one. An admin
  key is also accepted wherever an API key is.
- `YOLO_TOYS_CORS_ORIGINS`: browser origins allowed to call the API cross-origin and to open the
  WebSocket. None by default: no CORS headers, preflights refused.
- The WebSocket is refused (403) to a browser page of any other origin, keys or not: a page a user
  visits must not stream through the user's network position or cookie.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every configured key
(no early exit), and never echoed. Refusals are the service's `{"error", "detail"}` body: 401 with
`WWW-Authenticate: Bearer`, 403 for an origin. BentoML's own CORS (`http.cors` in its config) is
off by default and should stay off: this is the one place that decides.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings

HEALTH_PATHS = ("/livez", "/readyz", "/healthz")  # always open: orchestrators probe without keys
PROTOCOL = "yolo-toys"  # the WebSocket subprotocol the server selects when a client offers it
KEY_PROTOCOL = "yolo-toys.key."  # + the key: the subprotocol that carries it from a browser
QUERY_KEY = "api_key"
SESSION_COOKIE = "yolo_toys_session"
_SESSION_CONTEXT = b"yolo-toys browser session"
CORS_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, X-API-Key, Content-Type, Accept",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}
NEEDS_KEY = (
    "this server needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`; "
    f"a browser's WebSocket offers the subprotocols `{PROTOCOL}` and `{KEY_PROTOCOL}<key>`, a page `?{QUERY_KEY}=<key>`"
)
_DEFAULT_PORTS = {"http": ":80", "ws": ":80", "https": ":443", "wss": ":443"}


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def session_token(key: str) -> str:
    """The cookie a `?api_key=` page load gets: derived from the key, so the key itself never goes back."""
    return hmac.new(key.encode("utf-8", "surrogateescape"), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def _match(value: str, digests: list[bytes]) -> int | None:
    """Index of the configured secret `value` equals, comparing with every one (constant time, no early exit)."""
    presented, found = _digest(value), None
    for index, digest in enumerate(digests):
        if hmac.compare_digest(presented, digest):
            found = index
    return found


def _host(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    default = _DEFAULT_PORTS.get(scheme)
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def normalize_origin(origin: str) -> str:
    """`https://Example.com:443/` and `https://example.com` are one origin."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return origin.strip().lower()  # "null" (sandboxed pages, files) and other opaque origins
    return f"{parts.scheme.lower()}://{_host(parts.scheme.lower(), parts.netloc)}"


def same_origin(origin: str, host: str | None) -> bool:
    """The page that sends `Origin` was served by this host (the `Host` the request came in on)."""
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    return bool(host and parts.netloc) and _host(scheme, parts.netloc) == _host(scheme, host)


def _credentials(scope: Scope, headers: Headers) -> list[str]:
    """Every key the request presents, wherever it puts one."""
    found = [v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k == QUERY_KEY]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        found.append(token.strip())
    if api_key := headers.get("x-api-key", "").strip():
        found.append(api_key)
    found += [p[len(KEY_PROTOCOL) :] for p in scope.get("subprotocols", ()) if p.startswith(KEY_PROTOCOL)]
    return found


def _is_preflight(scope: Scope, headers: Headers) -> bool:
    return scope["type"] == "http" and scope["method"] == "OPTIONS" and "access-control-request-method" in headers


class Access:
    """API keys, CORS and the WebSocket Origin check (module docstring); arguments override the settings."""

    def __init__(self, app: ASGIApp, keys: Iterable[str] | None = None, origins: Iterable[str] | None = None,
                 open_paths: Iterable[str] | None = None) -> None:  # fmt: skip
        config = settings()
        self.app = app
        keys = list(config.api_keys if keys is None else keys)
        self._required = bool(keys)  # admin keys alone do not close the inference API
        self._admin = [_digest(k) for k in config.admin_keys]
        keys += config.admin_keys  # an admin key is also accepted wherever an API key is
        self._keys = [_digest(k) for k in keys]
        self._sessions = [session_token(k) for k in keys]
        self._session_digests = [_digest(s) for s in self._sessions]
        self.origins = frozenset(normalize_origin(o) for o in (config.cors_origins if origins is None else origins))
        extra = config.open_paths if open_paths is None else open_paths
        self.open_paths = tuple(p.rstrip("/") or "/" for p in extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin and _is_preflight(scope, headers):
            await self._preflight(origin, scope, receive, send)
            return
        refusal, login = self._check(scope, headers, origin)
        sending = self._sending(scope, origin, login, send)
        if refusal is None:
            await self.app(scope, receive, sending)
        elif scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            await refusal.response()(scope, receive, sending)
        else:  # a server without the denial-response extension turns this close into a 403
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.error})

    def is_open(self, path: str) -> bool:
        """A health probe, or a path of `YOLO_TOYS_OPEN_PATHS` or under one."""
        return path in HEALTH_PATHS or any(
            path == p or (p != "/" and path.startswith(p + "/")) for p in self.open_paths
        )

    def _check(self, scope: Scope, headers: Headers, origin: str | None) -> tuple[ServiceError | None, str | None]:
        """The refusal, if any, and the session cookie to set when a page came in with `?api_key=`."""
        same = origin is None or same_origin(origin, headers.get("host"))
        if scope["type"] == "websocket" and not same and normalize_origin(origin or "") not in self.origins:
            detail = f"a page from {origin!r} may not open this WebSocket: same origin or YOLO_TOYS_CORS_ORIGINS only"
            return ServiceError(403, "forbidden", detail), None
        if _manages(scope):
            return self._admin_check(scope, headers), None
        if not self._required or self.is_open(scope["path"]):
            return None, None
        presented = _credentials(scope, headers)
        by_key = [_match(value, self._keys) for value in presented]
        cookie = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        # The cookie never counts for another origin's request: a page elsewhere must not ride on it.
        by_cookie = bool(cookie) and same and _match(cookie, self._session_digests) is not None
        if by_cookie or any(m is not None for m in by_key):
            return None, self._login(scope, by_key[0] if by_key else None)
        if not presented and not cookie:
            return _unauthorized(NEEDS_KEY, 'Bearer realm="yolo-toys"'), None
        return _unauthorized("the API key is not valid", 'Bearer realm="yolo-toys", error="invalid_token"'), None

    def _admin_check(self, scope: Scope, headers: Headers) -> ServiceError | None:
        """The management routes need an admin key (`YOLO_TOYS_ADMIN_KEYS`), sent in a header: no cookie, no query."""
        if not self._admin:
            return ServiceError(403, "model management disabled", "this server has no admin keys; the operator "
                                "enables the management routes with YOLO_TOYS_ADMIN_KEYS")  # fmt: skip
        presented = _credentials({**scope, "query_string": b"", "subprotocols": ()}, headers)
        if any(_match(value, self._admin) is not None for value in presented):
            return None
        if not presented:
            return _unauthorized("model management needs an admin key: `Authorization: Bearer <key>` or "
                                 "`X-API-Key: <key>`", 'Bearer realm="yolo-toys-admin"')  # fmt: skip
        return _unauthorized("the admin key is not valid", 'Bearer realm="yolo-toys-admin", error="invalid_token"')

    def _login(self, scope: Scope, first: int | None) -> str | None:
        """A `Set-Cookie` value when a GET carried a valid `?api_key=` (`first`: the key it matched; the
        query is the first place `_credentials` reads)."""
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if scope["type"] != "http" or scope["method"] != "GET" or QUERY_KEY not in query or first is None:
            return None
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        return f"{SESSION_COOKIE}={self._sessions[first]}; Path=/; HttpOnly; SameSite=Strict{secure}"

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """CORS headers of an actual answer: the origin echoed only when it is on the allow-list."""
        if not self.origins:
            return []
        if origin and normalize_origin(origin) in self.origins:
            return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                    (b"access-control-expose-headers", b"WWW-Authenticate")]  # fmt: skip
        return [(b"vary", b"Origin")]

    def _sending(self, scope: Scope, origin: str | None, login: str | None, send: Send) -> Send:
        """`send` that adds the CORS headers and the cookie, and selects the `yolo-toys` subprotocol."""
        extra = self._cors(origin) if scope["type"] == "http" else []
        if login:
            extra.append((b"set-cookie", login.encode("latin-1")))
        offered = PROTOCOL in scope.get("subprotocols", ())

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "websocket.accept" and offered and not message.get("subprotocol"):
                message = {**message, "subprotocol": PROTOCOL}
            await send(message)

        return sending

    async def _preflight(self, origin: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a CORS preflight here, before any key check: browsers send none with it."""
        if normalize_origin(origin) not in self.origins:
            detail = f"origin {origin!r} is not allowed to call this API (YOLO_TOYS_CORS_ORIGINS)"
            await ServiceError(403, "forbidden", detail, headers={"Vary": "Origin"}).response()(scope, receive, send)
            return
        await Response(status_code=204, headers={"Access-Control-Allow-Origin": origin, **CORS_PREFLIGHT})(
            scope, receive, send
        )


def _manages(scope: Scope) -> bool:
    """A model-management call: any POST under /models (yolo_toys/front.py)."""
    path = scope["path"].rstrip("/")
    return scope["type"] == "http" and scope["method"] == "POST" and (path == "/models" or path.startswith("/models/"))


def _unauthorized(detail: str, challenge: str) -> ServiceError:
    return ServiceError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})
