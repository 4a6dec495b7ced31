"""`models.artifacts.unpack`: what an uploaded model artifact becomes, and what is refused with which 4xx.

Real files only: zips are built here with `zipfile`, the OpenVINO export is the shared INT8 YOLOv8n.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from models import artifacts
from models.artifacts import Unpacked, unpack
from yolo_toys.errors import ServiceError

OPENVINO = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "yolov8n_int8_openvino_model"
ONNX_BYTES = b"\x08\x07\x12\x04test"  # ir_version 7, producer_name "test": the head of a protobuf ModelProto
MB = 1 << 20

needs_openvino = pytest.mark.skipif(not OPENVINO.is_dir(), reason="no shared OpenVINO export")


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _openvino_members(top: str = "", *, metadata: bool = True) -> dict[str, bytes]:
    files = [p for p in sorted(OPENVINO.iterdir()) if metadata or p.name != "metadata.yaml"]
    return {f"{top}{p.name}": p.read_bytes() for p in files}


def _unpack(upload: Path, filename: str, family: str = "ultralytics", *, allow_pickle: bool = False,
            max_bytes: int = 64 * MB, name: str = "mymodel") -> Unpacked:  # fmt: skip
    workdir = upload.parent / "work"
    workdir.mkdir(exist_ok=True)
    return unpack(upload, filename, family, name, workdir, allow_pickle=allow_pickle, max_unpacked_bytes=max_bytes)


def _refused(upload: Path, filename: str, family: str = "ultralytics", **kwargs: object) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        _unpack(upload, filename, family, **kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value.detail, str) and "/tmp" not in caught.value.detail
    return caught.value


@needs_openvino
@pytest.mark.parametrize("top", ["yolov8n_int8_openvino_model/", ""], ids=["top-folder", "flat"])
def test_an_openvino_zip_becomes_the_named_export_folder(tmp_path: Path, top: str) -> None:
    upload = _zip(tmp_path / "upload.bin", _openvino_members(top))
    unpacked = _unpack(upload, "export.zip")
    assert unpacked.kind == "openvino"
    assert unpacked.entry == "mymodel_openvino_model" == unpacked.path.name
    assert unpacked.path.parent == tmp_path / "work"
    assert sorted(p.name for p in unpacked.path.iterdir()) == ["metadata.yaml", "yolov8n.bin", "yolov8n.xml"]
    assert (unpacked.path / "yolov8n.bin").read_bytes() == (OPENVINO / "yolov8n.bin").read_bytes()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["mymodel_openvino_model"]


@needs_openvino
def test_an_openvino_zip_ignores_what_finder_adds(tmp_path: Path) -> None:
    members = {**_openvino_members("export/"), "__MACOSX/export/._yolov8n.xml": b"x", "export/.DS_Store": b"x"}
    unpacked = _unpack(_zip(tmp_path / "upload.zip", members), "export.zip")
    assert unpacked.kind == "openvino"
    assert sorted(p.name for p in unpacked.path.iterdir()) == ["metadata.yaml", "yolov8n.bin", "yolov8n.xml"]


@needs_openvino
def test_an_ultralytics_openvino_zip_needs_metadata_yaml(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "upload.zip", _openvino_members("m/", metadata=False))
    error = _refused(upload, "export.zip")
    assert (error.status, error.error) == (422, "not an Ultralytics export")
    assert "metadata.yaml" in error.detail
    # Another family decides for itself.
    assert _unpack(upload, "export.zip", "my-family").kind == "openvino"


def test_a_transformers_folder_is_stored_under_the_model_name(tmp_path: Path) -> None:
    members = {"vit/config.json": b'{"model_type": "vit"}', "vit/model.safetensors": b"\0" * 64}
    unpacked = _unpack(_zip(tmp_path / "upload.zip", members), "vit.zip", "transformers")
    assert (unpacked.kind, unpacked.entry, unpacked.path) == ("transformers", "mymodel", tmp_path / "work" / "mymodel")
    assert sorted(p.name for p in unpacked.path.iterdir()) == ["config.json", "model.safetensors"]


def test_a_raw_onnx_file_is_copied_under_the_model_name(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(ONNX_BYTES)
    unpacked = _unpack(upload, "C:\\Users\\me\\yolo.ONNX")
    assert (unpacked.kind, unpacked.entry) == ("onnx", "mymodel.onnx")
    assert unpacked.path == tmp_path / "work" / "mymodel.onnx"
    assert unpacked.path.read_bytes() == ONNX_BYTES and upload.exists()


@pytest.mark.parametrize(("filename", "kind"), [("m.onnx", "onnx"), ("m.engine", "tensorrt")])
def test_a_zipped_onnx_or_engine_keeps_metadata_beside_it(tmp_path: Path, filename: str, kind: str) -> None:
    members = {f"out/{filename}": ONNX_BYTES, "out/metadata.yaml": b"task: detect\n"}
    unpacked = _unpack(_zip(tmp_path / "upload.zip", members), "out.zip")
    assert (unpacked.kind, unpacked.entry) == (kind, f"mymodel/{filename}")
    assert unpacked.path == tmp_path / "work" / "mymodel"
    assert sorted(p.name for p in unpacked.path.iterdir()) == sorted([filename, "metadata.yaml"])


def test_a_raw_engine_file_is_a_tensorrt_artifact(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(b"\x10\x00\x00\x00{}" + b"\x01" * 32)
    unpacked = _unpack(upload, "yolo.engine")
    assert (unpacked.kind, unpacked.entry) == ("tensorrt", "mymodel.engine")


def test_a_zip_is_recognised_whatever_its_name(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "upload", {"config.json": b"{}", "weights.safetensors": b"\0"})
    assert _unpack(upload, "model.onnx", "transformers").kind == "transformers"


def _checkpoint(path: Path) -> Path:
    """What torch.save writes since 1.6: a zip holding the pickle (not loaded here)."""
    return _zip(path, {"archive/data.pkl": b"\x80\x02}q\x00.", "archive/version": b"3\n"})


def test_a_pytorch_checkpoint_is_refused_unless_pickles_are_allowed(tmp_path: Path) -> None:
    upload = _checkpoint(tmp_path / "upload")
    error = _refused(upload, "best.pt")
    assert (error.status, error.error) == (403, "pickle artifacts disabled")
    assert "YOLO_TOYS_ALLOW_PICKLE=1" in error.detail and "runs code" in error.detail
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    unpacked = _unpack(upload, "best.pt", allow_pickle=True)
    assert (unpacked.kind, unpacked.entry) == ("pytorch", "mymodel.pt")
    assert unpacked.path.read_bytes() == upload.read_bytes()


def test_a_pt_that_is_no_checkpoint_is_unsupported(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_text("hello")
    error = _refused(upload, "best.pt", allow_pickle=True)
    assert (error.status, error.error) == (415, "unsupported artifact")


@pytest.mark.parametrize(
    "member",
    ["../evil", "ok/../../evil", "/etc/evil", "C:/evil", "..\\evil"],
    ids=["slip", "deep", "abs", "drive", "bs"],
)
def test_unsafe_member_names_are_refused(tmp_path: Path, member: str) -> None:
    upload = _zip(tmp_path / "upload.zip", {"config.json": b"{}", member: b"x"})
    error = _refused(upload, "m.zip", "transformers")
    assert (error.status, error.error) == (400, "unsafe archive")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_a_symlink_member_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "upload.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("config.json", b"{}")
        link = zipfile.ZipInfo("weights.bin")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    error = _refused(upload, "m.zip", "transformers")
    assert (error.status, error.error) == (400, "unsafe archive")


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "MAX_MEMBERS", 5)
    upload = _zip(tmp_path / "upload.zip", {"config.json": b"{}", **{f"f{i}": b"" for i in range(5)}})
    error = _refused(upload, "m.zip", "transformers")
    assert (error.status, error.error) == (400, "unsafe archive")


def test_a_zip_declaring_more_than_the_limit_is_refused(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "upload.zip", {"config.json": b"{}", "weights.bin": b"\0" * (2 * MB)})
    assert upload.stat().st_size < 64 * 1024  # compresses well: the declared size is what counts
    error = _refused(upload, "m.zip", "transformers", max_bytes=MB)
    assert (error.status, error.error) == (413, "artifact too large")
    assert list((tmp_path / "work").iterdir()) == []  # nothing extracted is left behind


def test_a_raw_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(ONNX_BYTES + b"\0" * 100)
    error = _refused(upload, "m.onnx", max_bytes=50)
    assert (error.status, error.error) == (413, "artifact too large")


def test_a_truncated_zip_is_corrupt(tmp_path: Path) -> None:
    whole = _zip(tmp_path / "whole.zip", {"config.json": b"{}", "weights.bin": bytes(range(256)) * 64})
    upload = tmp_path / "upload.zip"
    upload.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    error = _refused(upload, "m.zip", "transformers")
    assert (error.status, error.error) == (400, "corrupt artifact")


def test_a_zip_failing_its_crc_is_corrupt(tmp_path: Path) -> None:
    upload = tmp_path / "upload.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", b"{}")
        archive.writestr("weights.bin", b"A" * 4096)
    data = upload.read_bytes()
    at = data.index(b"A" * 4096)
    upload.write_bytes(data[:at] + b"B" + data[at + 1 :])
    error = _refused(upload, "m.zip", "transformers")
    assert (error.status, error.error) == (400, "corrupt artifact")


@pytest.mark.parametrize(
    ("members", "filename"),
    [
        ({"readme.txt": b"hello", "notes.md": b"# notes"}, "m.zip"),
        ({"a.onnx": ONNX_BYTES, "b.onnx": ONNX_BYTES}, "m.zip"),
        ({"model.onnx": b"not a protobuf"}, "m.zip"),
        ({"archive/data.pkl": b"\x80\x02}q\x00."}, "best.zip"),
    ],
    ids=["text", "two-onnx", "fake-onnx", "pickle-in-zip"],
)
def test_unrecognised_zips_are_unsupported(tmp_path: Path, members: dict[str, bytes], filename: str) -> None:
    error = _refused(_zip(tmp_path / "upload.zip", members), filename)
    assert (error.status, error.error) == (415, "unsupported artifact")
    assert "ONNX file" in error.detail and "OpenVINO" in error.detail and "save_pretrained" in error.detail


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"name,score\n", "table.csv"),
        (b"just some text", "model.onnx"),
        (ONNX_BYTES, "model"),
        (b"PK\x05\x06", "m.onnx"),
    ],
    ids=["csv", "text-as-onnx", "no-suffix", "zip-end-only"],
)
def test_unrecognised_files_are_unsupported(tmp_path: Path, data: bytes, filename: str) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(data)
    error = _refused(upload, filename)
    assert (error.status, error.error) == (415, "unsupported artifact")
    assert "YOLO_TOYS_ALLOW_PICKLE=1" in error.detail


def test_the_unsupported_detail_offers_pt_when_allowed(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(b"text")
    assert "PyTorch .pt checkpoint" in _refused(upload, "x.txt", allow_pickle=True).detail


def test_the_transformers_family_takes_only_transformers_folders(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(ONNX_BYTES)
    error = _refused(upload, "m.onnx", "transformers")
    assert (error.status, error.error) == (422, "wrong family for artifact")
    assert not (tmp_path / "work" / "mymodel.onnx").exists()


def test_the_ultralytics_family_refuses_transformers_folders(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "upload.zip", {"config.json": b"{}", "model.safetensors": b"\0"})
    error = _refused(upload, "m.zip", "ultralytics")
    assert (error.status, error.error) == (422, "wrong family for artifact")
    assert "transformers" in error.detail


def test_other_families_accept_every_kind(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "upload.zip", {"config.json": b"{}", "model.safetensors": b"\0"})
    assert _unpack(upload, "m.zip", "palette").kind == "transformers"


@pytest.mark.parametrize("filename", ["m.onnx", "m.zip", "m.pt"])
def test_an_empty_upload_is_refused(tmp_path: Path, filename: str) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(b"")
    error = _refused(upload, filename, allow_pickle=True)
    assert (error.status, error.error) == (400, "empty artifact")


def test_a_zip_of_only_folders_is_empty(tmp_path: Path) -> None:
    upload = _zip(tmp_path / "upload.zip", {"a/": b"", "a/b/": b""})
    error = _refused(upload, "m.zip")
    assert (error.status, error.error) == (400, "empty artifact")


def test_clashing_members_are_refused(tmp_path: Path) -> None:
    upload = tmp_path / "upload.zip"
    with zipfile.ZipFile(upload, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("config.json", b"{}")
        archive.writestr("config.json", b"{}")
    error = _refused(upload, "m.zip", "transformers")
    assert (error.status, error.error) == (400, "unsafe archive")


def test_the_limit_holds_on_bytes_written_not_only_on_declared_sizes(tmp_path: Path) -> None:
    """A header may understate a member's size: extraction counts the bytes it writes (here past a 1 MB limit)."""
    upload = _zip(tmp_path / "upload.zip", {"weights.bin": b"\0" * (2 * MB)})
    with zipfile.ZipFile(upload) as archive, pytest.raises(ServiceError) as caught:
        artifacts._extract_member(archive, archive.getinfo("weights.bin"), tmp_path / "out.bin", 0, MB)
    assert (caught.value.status, caught.value.error) == (413, "artifact too large")
    assert (tmp_path / "out.bin").stat().st_size <= MB
