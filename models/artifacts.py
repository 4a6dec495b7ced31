"""Turn an uploaded model artifact (`POST /models`) into what goes into the BentoML model store.

An upload is refused here, with a 4xx a client can act on, before anything is stored or loaded:
a model the runners cannot load should fail at registration, not at its first request.

- The content decides what an artifact is; the file name's suffix is only a hint. A client names
  files freely (a zip called `model.onnx`, a PyTorch checkpoint called `model.zip`), and what a
  family later does with a file depends on what the file *is*.
- A PyTorch checkpoint (`.pt`) is a pickle: loading it runs code from the upload. It is accepted
  only when the operator opts in (`YOLO_TOYS_ALLOW_PICKLE=1`).
- A zip is extracted by hand, member by member: no absolute names, no `..`, no symlinks, a bounded
  number of members. The size limit is checked twice: on the sizes the zip declares (cheap, before
  writing anything) and on the bytes actually written, because the declared sizes are the client's
  word and a crafted header may understate them.
"""

from __future__ import annotations

import re
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yolo_toys.errors import ServiceError

__all__ = ["MAX_MEMBERS", "Unpacked", "unpack"]

MAX_MEMBERS = 10_000  # members of one zip; read at call time, so a test can lower it
_CHUNK = 1 << 20
_EXTRACTED = "unzip~"  # extraction folder inside workdir; "~" is never part of a model name
_SUFFIXES = {".onnx": "onnx", ".engine": "tensorrt", ".pt": "pytorch", ".pth": "pytorch"}
# Kinds a built-in family loads; any other (user-added) family decides for itself when it loads.
_FAMILY_KINDS = {
    "transformers": ("transformers",),
    "ultralytics": ("onnx", "openvino", "tensorrt", "pytorch"),
}
# What a damaged zip raises on open or read (CRC mismatch: BadZipFile; broken deflate data: zlib.error).
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, struct.error, UnicodeDecodeError)
_DRIVE = re.compile(r"^[A-Za-z]:")
# Left out when extracting: what macOS' Finder adds to a zip beside the folder.
_JUNK_DIRS = ("__MACOSX",)
_JUNK_FILES = (".DS_Store",)


@dataclass
class Unpacked:
    path: Path  # the file or folder to copy into the model store (inside workdir)
    entry: str  # what the family loads, relative to the stored model's folder
    kind: str  # "onnx" | "openvino" | "tensorrt" | "transformers" | "pytorch"


def unpack(
    upload: Path, filename: str, family: str, name: str, workdir: Path, *, allow_pickle: bool, max_unpacked_bytes: int
) -> Unpacked:
    """The artifact in `upload`, checked and laid out in `workdir` (an empty folder) as `name`.

    Only the suffix of `filename` (the client's file name) is used, and only as a hint.
    """
    size = upload.stat().st_size
    if size == 0:
        raise ServiceError(400, "empty artifact", "The uploaded file is empty.")
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if _SUFFIXES.get(suffix) == "pytorch":
        return _single_pytorch(
            upload, suffix, family, name, workdir, allow_pickle=allow_pickle, max_bytes=max_unpacked_bytes
        )
    if _is_zip(upload):
        return _from_zip(upload, family, name, workdir, allow_pickle=allow_pickle, max_bytes=max_unpacked_bytes)
    kind = _SUFFIXES.get(suffix)
    if kind == "onnx" and not _looks_like_onnx(upload):
        raise _unsupported(allow_pickle, "This .onnx file is not an ONNX model (no protobuf ModelProto header).")
    if kind is None:
        raise _unsupported(allow_pickle, "The file is not a zip and its suffix names no supported format.")
    _check_family(family, kind)
    return _copy_single(upload, workdir / f"{name}{suffix}", kind, max_unpacked_bytes)


def _single_pytorch(
    upload: Path, suffix: str, family: str, name: str, workdir: Path, *, allow_pickle: bool, max_bytes: int
) -> Unpacked:
    """A `.pt`/`.pth` checkpoint, when the operator allows pickles."""
    if not allow_pickle:
        raise ServiceError(
            403,
            "pickle artifacts disabled",
            "Loading a PyTorch pickle (.pt) runs code from the file, so this server does not accept them; "
            "the operator enables them with YOLO_TOYS_ALLOW_PICKLE=1.",
        )
    with open(upload, "rb") as f:
        head = f.read(4)
    # A checkpoint is a zip (torch >= 1.6) or, in the legacy format, a pickle of protocol 2 (b"\x80\x02").
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise _unsupported(allow_pickle, "This file is not a PyTorch checkpoint (neither a zip nor a pickle).")
    _check_family(family, "pytorch")
    return _copy_single(upload, workdir / f"{name}{suffix}", "pytorch", max_bytes)


def _copy_single(upload: Path, target: Path, kind: str, max_bytes: int) -> Unpacked:
    """A single-file artifact, copied into workdir under its stored name (the upload stays the caller's)."""
    if upload.stat().st_size > max_bytes:
        raise _too_large(max_bytes)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(upload, target)
    return Unpacked(path=target, entry=target.name, kind=kind)


def _is_zip(path: Path) -> bool:
    """A zip by its end record, or by its first local header (a truncated zip has no end record)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or zipfile.is_zipfile(path)


def _looks_like_onnx(path: Path) -> bool:
    """A modest check: ONNX is a protobuf ModelProto whose first field is ir_version (tag 0x08, a small varint)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x08 and 1 <= head[1] <= 0x7F


def _from_zip(upload: Path, family: str, name: str, workdir: Path, *, allow_pickle: bool, max_bytes: int) -> Unpacked:
    """A zipped artifact; nothing of the extraction is left in workdir when it is refused."""
    extracted = workdir / _EXTRACTED
    extracted.mkdir(parents=True, exist_ok=False)
    try:
        _extract(upload, extracted, max_bytes)
        return _lay_out(_root(extracted), family, name, workdir, allow_pickle=allow_pickle)
    finally:
        shutil.rmtree(extracted, ignore_errors=True)  # gone already when the zip's root was the artifact


def _lay_out(root: Path, family: str, name: str, workdir: Path, *, allow_pickle: bool) -> Unpacked:
    """Find the kind, check the family, and move the extracted root to its stored name."""
    kind, model = _detect(root, allow_pickle)
    _check_family(family, kind)
    if kind == "openvino" and family == "ultralytics" and not (root / "metadata.yaml").is_file():
        raise ServiceError(
            422,
            "not an Ultralytics export",
            "Ultralytics' exporter writes metadata.yaml beside the model, with the task and the class names; "
            "this OpenVINO folder has none.",
        )
    target = workdir / (f"{name}_openvino_model" if kind == "openvino" else name)
    root.rename(target)
    entry = target.name if model == root else f"{target.name}/{model.name}"
    return Unpacked(path=target, entry=entry, kind=kind)


def _extract(upload: Path, dest: Path, max_bytes: int) -> None:
    """Every member of the zip under `dest`, refusing unsafe names and more than `max_bytes` in all."""
    try:
        with zipfile.ZipFile(upload) as archive:
            written = 0
            for info, parts in _checked_members(archive.infolist(), max_bytes):
                written = _extract_member(archive, info, dest.joinpath(*parts), written, max_bytes)
    except _CORRUPT as exc:
        raise ServiceError(400, "corrupt artifact", "The zip is damaged: it cannot be read to the end.") from exc
    except NotImplementedError as exc:
        raise ServiceError(
            415, "unsupported artifact", "The zip uses a compression method this server cannot read; use deflate."
        ) from exc
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise ServiceError(400, "unsafe archive", "Two members of the zip write to the same path.") from exc


def _checked_members(infos: list[zipfile.ZipInfo], max_bytes: int) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The members to extract with their path parts, after checking count, names, types and declared sizes."""
    if len(infos) > MAX_MEMBERS:
        detail = f"The zip has {len(infos)} members; at most {MAX_MEMBERS} are accepted."
        raise ServiceError(400, "unsafe archive", detail)
    if sum(info.file_size for info in infos) > max_bytes:
        raise _too_large(max_bytes)
    members = []
    for info in infos:
        parts = _member_parts(info)
        if parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_FILES:
            continue
        members.append((info, parts))
    if not any(not info.is_dir() for info, _ in members):
        raise ServiceError(400, "empty artifact", "The zip holds no files.")
    return members


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path parts of one member, refusing absolute names, `..`, symlinks and encrypted members."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise ServiceError(400, "unsafe archive", f"The zip member {info.filename!r} has an absolute path.")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ServiceError(400, "unsafe archive", f"The zip member {info.filename!r} climbs out of the archive (..).")
    if not parts:
        raise ServiceError(400, "unsafe archive", f"The zip member {info.filename!r} has no name.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ServiceError(400, "unsafe archive", f"The zip member {info.filename!r} is a symbolic link.")
    if info.flag_bits & 0x1:
        raise ServiceError(415, "unsupported artifact", f"The zip member {info.filename!r} is encrypted.")
    return parts


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, limit: int) -> int:
    """Write one member to `target`; the running total of bytes written, which may not pass `limit`."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return written
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(target, "xb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise _too_large(limit)
            out.write(chunk)
    return written


def _root(extracted: Path) -> Path:
    """The zip's one top-level folder when everything sits under it, else the zip's root."""
    children = list(extracted.iterdir())
    return children[0] if len(children) == 1 and children[0].is_dir() else extracted


def _detect(root: Path, allow_pickle: bool) -> tuple[str, Path]:
    """The kind of an extracted artifact, and what to load: the root folder itself or one file in it."""
    xmls = [p for p in root.glob("*.xml") if p.is_file()]
    if len(xmls) == 1 and xmls[0].with_suffix(".bin").is_file():
        return "openvino", root
    if (root / "config.json").is_file():
        return "transformers", root
    models = [p for p in root.iterdir() if p.is_file() and _SUFFIXES.get(p.suffix.lower()) in ("onnx", "tensorrt")]
    if len(models) != 1:
        raise _unsupported(allow_pickle, "The zip holds no model this server recognises.")
    kind = _SUFFIXES[models[0].suffix.lower()]
    if kind == "onnx" and not _looks_like_onnx(models[0]):
        raise _unsupported(allow_pickle, f"{models[0].name} in the zip is not an ONNX model.")
    return kind, models[0]


def _check_family(family: str, kind: str) -> None:
    """Refuse a kind the built-in family cannot load (a user-added family accepts every kind here)."""
    accepted = _FAMILY_KINDS.get(family)
    if accepted is not None and kind not in accepted:
        raise ServiceError(
            422,
            "wrong family for artifact",
            f"The {family} family loads {', '.join(accepted)} artifacts; this upload is a {kind} artifact.",
        )


def _unsupported(allow_pickle: bool, why: str) -> ServiceError:
    """A 415 that says why, and what the server accepts."""
    pickle = "a PyTorch .pt checkpoint" if allow_pickle else "(when the operator sets YOLO_TOYS_ALLOW_PICKLE=1) a .pt"
    return ServiceError(
        415,
        "unsupported artifact",
        f"{why} Accepted: an ONNX file, a zipped OpenVINO export folder, a zipped TensorRT engine, "
        f"a zipped transformers save_pretrained folder, or {pickle}.",
    )


def _too_large(limit: int) -> ServiceError:
    """A 413 naming the server's limit."""
    return ServiceError(
        413, "artifact too large", f"The artifact unpacks to more than {limit} bytes, the server's limit."
    )
