"""Client of a running server's model management API: `python -m models register|load|unload|versions`.

Why a client and not the model store: a model registered or (un)loaded at runtime must go through the server
that serves it, which records the change, starts or stops the runners and answers once the model is ready
(or failed). The CLI only uploads and asks; the server does the work, so both share one code path.

The artifact upload is a multipart body built by hand and streamed from disk in 1 MiB chunks with its
Content-Length computed up front: multi-GB weights never sit in memory, and the server can refuse an
oversized upload from its length before reading it. A folder (an OpenVINO export, a transformers
`save_pretrained` folder) is zipped first, stored, with the folder as the zip's single top-level directory.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from tqdm import tqdm

__all__ = ["DEFAULT_URL", "load", "register", "unload", "versions"]

DEFAULT_URL = "http://localhost:3000"
CHUNK = 1 << 20  # bytes read from disk and sent per step
CONNECT_TIMEOUT_S = 10.0
ANSWER_MARGIN_S = 30.0  # past the server's own timeout_s, the time its answer may take


class RemoteError(Exception):
    """A request that failed; `code` is the process exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Server:
    """Where the management API is and how to authenticate to it."""

    url: str | None = None  # default: $YOLO_TOYS_URL, else DEFAULT_URL
    key: str | None = None  # default: $YOLO_TOYS_ADMIN_KEY; sent as a bearer token

    def __post_init__(self) -> None:
        self.url = (self.url or os.environ.get("YOLO_TOYS_URL") or DEFAULT_URL).rstrip("/")
        self.key = self.key or os.environ.get("YOLO_TOYS_ADMIN_KEY") or None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def model_url(self, name: str, action: str = "") -> str:
        return f"{self.url}/models/{quote(name, safe='')}" + (f"/{action}" if action else "")


# --- commands: each returns the process exit status ---------------------------------------------------------


def register(
    path: Path | str, *, name: str, family: str, task: str, hf_task: str | None = None, description: str | None = None,
    load: bool = True, default: bool = False, timeout_s: float = 600.0, server: Server | None = None,
) -> int:
    """Upload a weights file or folder as a new model version (`POST /models`)."""
    server = server or Server()
    path = Path(path).expanduser()
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    fields = {"name": name, "family": family, "task": task, "hf_task": hf_task, "description": description,
              "load": _flag(load), "default": _flag(default), "timeout_s": f"{timeout_s:g}"}
    fields = {k: v for k, v in fields.items() if v is not None}
    with tempfile.TemporaryDirectory(prefix="yolo-toys-upload-") as tmp:
        artifact = zip_folder(path, Path(tmp)) if path.is_dir() else path
        body = Multipart.build(fields, "artifact", artifact)
        return _call(lambda client: _upload(client, f"{server.url}/models", body, timeout_s), server, timeout_s)


def load(name: str, *, version: int | None = None, default: bool = False, timeout_s: float = 600.0,
         server: Server | None = None) -> int:
    """Load a model's version (default: the server's choice) into its runner (`POST /models/{name}/load`)."""
    server = server or Server()
    payload = {"version": version, "default": default, "timeout_s": timeout_s}
    return _call(lambda client: client.post(server.model_url(name, "load"), json=payload), server, timeout_s)


def unload(name: str, *, version: int | None = None, timeout_s: float = 600.0, server: Server | None = None) -> int:
    """Unload a model's version (default: the server's choice) from its runner (`POST /models/{name}/unload`)."""
    server = server or Server()
    payload = {"version": version, "timeout_s": timeout_s}
    return _call(lambda client: client.post(server.model_url(name, "unload"), json=payload), server, timeout_s)


def versions(name: str, *, server: Server | None = None) -> int:
    """Show a model's versions and their state (`GET /models/{name}`)."""
    server = server or Server()
    return _call(lambda client: client.get(server.model_url(name)), server, 0.0, show=_show_detail)


def _flag(value: bool) -> str:
    return "true" if value else "false"


# --- HTTP ------------------------------------------------------------------------------------------------------


def _call(request: Callable[[httpx.Client], httpx.Response], server: Server, timeout_s: float,
          show: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Send one request; print its answer, or the error, and return the exit status."""
    timeout = httpx.Timeout(timeout_s + ANSWER_MARGIN_S, connect=CONNECT_TIMEOUT_S)
    try:
        with httpx.Client(headers=server.headers(), timeout=timeout) as client:
            answer = _answer(request(client))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        print(f"error: the server is not reachable at {server.url} ({exc})", file=sys.stderr)
        return 2
    except httpx.TimeoutException:
        print(f"error: no answer from {server.url} within {timeout_s + ANSWER_MARGIN_S:g} s", file=sys.stderr)
        return 1
    except (httpx.HTTPError, RemoteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, RemoteError) else 1
    (show or _show_change)(answer)
    return 0


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a success; a RemoteError with the server's `error` and `detail` otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        if not isinstance(body, dict) or "error" not in body:
            raise RemoteError(f"HTTP {response.status_code}: {response.text.strip()[:500] or response.reason_phrase}")
        detail = body.get("detail")
        if detail is not None and not isinstance(detail, str):
            detail = json.dumps(detail)
        raise RemoteError(f"{body['error']}: {detail}" if detail not in (None, "") else str(body["error"]))
    if not isinstance(body, dict):
        raise RemoteError(f"HTTP {response.status_code}: the answer is not a JSON object")
    return body


def _upload(client: httpx.Client, url: str, body: Multipart, timeout_s: float) -> httpx.Response:
    with Progress(body.length, f"uploading {body.filename}") as advance:
        return client.post(url, content=_then_wait(body.chunks(advance), timeout_s), headers=body.headers())


def _then_wait(chunks: Iterator[bytes], timeout_s: float) -> Iterator[bytes]:
    """`chunks`, then a note: the server answers once the model is stored (and loaded), which takes a while."""
    yield from chunks
    print(f"uploaded; waiting for the server (up to {timeout_s:g} s)", file=sys.stderr, flush=True)


# --- multipart ---------------------------------------------------------------------------------------------


@dataclass
class Multipart:
    """A multipart/form-data body: text fields, then one file part streamed from disk."""

    boundary: str
    head: bytes  # every text part and the file part's headers
    file: Path
    filename: str
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.file.stat().st_size

    @property
    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    @classmethod
    def build(cls, fields: dict[str, str], file_field: str, file: Path) -> Multipart:
        boundary = f"yolo-toys-{secrets.token_hex(16)}"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(k)}"\r\n\r\n{v}\r\n'
                 for k, v in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(file_field)}"; '
                     f'filename="{_quoted(file.name)}"\r\nContent-Type: application/octet-stream\r\n\r\n')
        return cls(boundary, "".join(parts).encode(), file, file.name)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": f"multipart/form-data; boundary={self.boundary}", "Content-Length": str(self.length)}

    def chunks(self, advance: Callable[[int], None]) -> Iterator[bytes]:
        """The body, `advance(n)` after each n bytes sent; the file must not change meanwhile."""
        yield self.head
        advance(len(self.head))
        with self.file.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
                advance(len(chunk))
        yield self.tail
        advance(len(self.tail))


def _quoted(value: str) -> str:
    """A name or filename inside a quoted header parameter, escaped as browsers do (WHATWG HTML)."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# --- zipping a folder ------------------------------------------------------------------------------------------


def zip_folder(folder: Path, into: Path) -> Path:
    """`folder` as `into/<folder>.zip`, stored (weights do not compress), the folder its single top-level entry."""
    folder = folder.resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    target = into / f"{folder.name}.zip"
    with Progress(sum(p.stat().st_size for p in files), f"zipping {folder.name}") as advance, \
            zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in files:
            _add(archive, path, Path(folder.name, path.relative_to(folder)).as_posix(), advance)
    return target


def _add(archive: zipfile.ZipFile, path: Path, arcname: str, advance: Callable[[int], None]) -> None:
    """Copy one file into the archive in chunks, so that the progress moves within a multi-GB file."""
    info = zipfile.ZipInfo.from_file(path, arcname)
    info.compress_type = zipfile.ZIP_STORED
    with path.open("rb") as src, archive.open(info, "w") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            advance(len(chunk))


# --- progress ---------------------------------------------------------------------------------------------


class Progress:
    """A byte progress bar on a terminal; off one, a line on stderr per 10 % (a bar's redraws would run together).

    Used as `with Progress(total, what) as advance:`; `advance(n)` counts n more bytes done.
    """

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done, self.decile = total, what, 0, 0
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, file=sys.stderr,
                        disable=not sys.stderr.isatty())

    def __enter__(self) -> Callable[[int], None]:
        return self.advance

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def advance(self, n: int) -> None:
        self.done += n
        if not self.bar.disable:
            self.bar.update(n)
            if self.done >= self.total:
                self.bar.close()  # complete: what is printed next starts on its own line
            return
        decile = 10 if self.total <= 0 else min(10, self.done * 10 // self.total)
        if decile > self.decile:
            self.decile = decile
            print(f"{self.what} {decile * 10}% ({_mib(self.done)} of {_mib(self.total)} MiB)",
                  file=sys.stderr, flush=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


# --- output ------------------------------------------------------------------------------------------------


def _show_change(answer: dict[str, Any]) -> None:
    """A register/load/unload answer: the server's message, then the model's versions."""
    if answer.get("message"):
        print(answer["message"])
    if isinstance(answer.get("model"), dict):
        _show_detail(answer["model"])


def _show_detail(model: dict[str, Any]) -> None:
    default = model.get("default_version")
    print(f"{model.get('name')} ({model.get('family')}, {model.get('task')}), "
          f"default version: {'none' if default is None else default}")
    print(versions_table(model))


COLUMNS = ("version", "state", "default", "weight", "load (s)", "memory (MiB)", "workers", "reason")
RIGHT = {"version", "weight", "load (s)", "memory (MiB)"}  # right-aligned: numbers


def versions_table(model: dict[str, Any]) -> str:
    """One row per version of a ModelDetail, as aligned text."""
    split = model.get("split") or {}
    rows = [_row(v, split) for v in model.get("versions") or []]
    if not rows:
        return "(no versions)"
    widths = [max(len(cell) for cell in column) for column in zip(COLUMNS, *rows, strict=True)]
    lines = ["  ".join(cell.rjust(w) if name in RIGHT else cell.ljust(w)
                       for name, cell, w in zip(COLUMNS, row, widths, strict=True))
             for row in (COLUMNS, *rows)]
    return "\n".join(line.rstrip() for line in lines)


def _row(v: dict[str, Any], split: dict[str, int]) -> tuple[str, ...]:
    weight = v.get("weight")
    if weight is None:
        weight = split.get(str(v.get("version")))
    load_s, memory = v.get("load_s"), v.get("memory_bytes")
    return (
        str(v.get("version", "")), str(v.get("state") or ""), "*" if v.get("default") else "",
        "" if weight is None else f"{weight}%", "" if load_s is None else f"{load_s:.1f}",
        "" if memory is None else _mib(memory), str(v.get("workers") or ""),
        " ".join(str(v.get("reason") or "").split()),
    )
