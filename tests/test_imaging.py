"""imaging.py: upload checks (front side) and the one decode (runner side), over the tests/imagefiles corpus."""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imagefiles import (
    BROKEN,
    EXPECTED_SIZE,
    GRAYSCALE,
    PHOTO_SIZE,
    TRANSPARENT_BLOCK,
    TRANSPARENT_CORNER,
    TRANSPARENT_LEFT_HALF,
    TRANSPARENT_TOP_HALF,
    VALID,
    base_photo,
    float32,
    gray16,
    half_photo,
    int32,
    rgb16,
)
from yolo_toys import imaging
from yolo_toys.errors import ServiceError
from yolo_toys.imaging import DecodedImage, EncodedImage, check_upload, decode
from yolo_toys.settings import settings

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")


@pytest.fixture(autouse=True)
def autoinstall_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Importing ultralytics (base_photo does) patches PIL.Image.open, as in the runner process: on a
    file PIL cannot identify it calls check_requirements("pi-heif"), which pip-installs unless
    YOLO_OFFLINE is set. Record those calls instead, so that these tests never install anything."""
    from ultralytics.utils import checks

    calls: list = []

    def check_requirements(requirements=(), *args, **kwargs) -> bool:
        calls.append(requirements)
        return False

    monkeypatch.setattr(checks, "check_requirements", check_requirements)
    return calls


def serve(data: bytes) -> DecodedImage:
    """What the service does with an upload: the front's check, then the runner's decode."""
    check_upload(data)
    return decode(data)


@functools.cache
def served(name: str) -> DecodedImage:
    """Each valid image decoded once, shared by the tests that look at its pixels."""
    return serve(VALID[name]())


def decoded(name: str) -> np.ndarray:
    return served(name).rgb


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - np.asarray(b, dtype=np.int16)).mean())


def photo() -> np.ndarray:
    return np.asarray(base_photo())


def luma() -> np.ndarray:
    return np.asarray(base_photo().convert("L"))


# ---- valid images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_image_is_served_as_rgb_uint8(name: str) -> None:
    data = VALID[name]()
    encoded = check_upload(data)
    assert isinstance(encoded, EncodedImage)
    assert encoded.data is data
    assert encoded.format == imaging.sniff_format(data) in imaging.SUPPORTED_FORMATS

    image = served(name)
    width, height = EXPECTED_SIZE[name]
    assert image.rgb.dtype == np.uint8
    assert image.rgb.shape == (height, width, 3)
    assert image.rgb.flags.c_contiguous
    assert (image.width, image.height) == (width, height)
    assert image.format == encoded.format
    bgr = image.bgr
    assert bgr.shape == image.rgb.shape and bgr.flags.c_contiguous
    assert np.array_equal(bgr[..., 0], image.rgb[..., 2]) and np.array_equal(bgr[..., 2], image.rgb[..., 0])


# name -> largest mean absolute difference to the photo (0: lossless).
PHOTO_FIDELITY = {
    "png": 0,
    "bmp": 0,
    "tiff": 0,
    "tiff_lzw": 0,
    "ppm": 0,
    "jpeg": 1.5,
    "jpeg_progressive": 1.5,
    "jpeg_cmyk": 1.5,
    "webp": 4,
    "gif": 6,
    **{f"jpeg_exif_orientation_{o}": 3 for o in range(2, 9)},
}
HALF_FIDELITY = {
    "bmp_top_down": 0,
    "tiff_cmyk": 0,
    "jpeg_corrupt_exif": 4,
    "gif_multiframe": 6,
}


@pytest.mark.parametrize("name", sorted(PHOTO_FIDELITY))
def test_decoded_pixels_match_the_photo(name: str) -> None:
    """Colour images, EXIF-oriented ones included, come back as the upright photo (within codec loss)."""
    assert mean_abs_diff(decoded(name), photo()) <= PHOTO_FIDELITY[name]


@pytest.mark.parametrize("name", sorted(HALF_FIDELITY))
def test_decoded_pixels_match_the_half_size_photo(name: str) -> None:
    assert mean_abs_diff(decoded(name), np.asarray(half_photo())) <= HALF_FIDELITY[name]


def test_exif_orientation_6_is_stored_sideways_and_served_upright() -> None:
    data = VALID["jpeg_exif_orientation_6"]()
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.size == PHOTO_SIZE[::-1]  # stored 1080x810
        assert raw.getexif()[0x0112] == 6
    rgb = decoded("jpeg_exif_orientation_6")
    assert (rgb.shape[1], rgb.shape[0]) == PHOTO_SIZE
    assert mean_abs_diff(rgb, photo()) <= 3
    # Not merely the right shape: the other 90-degree rotation is far off.
    assert mean_abs_diff(rgb[::-1, ::-1], photo()) > 20


def test_corrupt_exif_is_ignored_not_fatal() -> None:
    rgb = decoded("jpeg_corrupt_exif")
    assert (rgb.shape[1], rgb.shape[0]) == EXPECTED_SIZE["jpeg_corrupt_exif"]


@pytest.mark.parametrize("name", GRAYSCALE)
def test_grayscale_stays_grey(name: str) -> None:
    rgb = decoded(name)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert rgb.std() > 30  # still a photo, not a flat field


@pytest.mark.parametrize("name", ["pgm", "jpeg_gray"])
def test_8bit_grey_matches_the_luma(name: str) -> None:
    assert mean_abs_diff(decoded(name)[..., 0], luma()) <= 1.5


def test_16bit_grey_png_keeps_its_contrast() -> None:
    with Image.open(io.BytesIO(VALID["png_gray16"]())) as raw:
        assert raw.mode in ("I;16", "I")
        assert np.array_equal(np.asarray(raw, dtype=np.uint16), gray16())
    grey = decoded("png_gray16")[..., 0]
    assert grey.min() <= 10 and grey.max() >= 245  # neither all white nor all black
    assert np.abs(grey.astype(np.int16) - luma()).max() <= 1  # 16-bit v*257 -> 8-bit v


def test_16bit_rgb_png_keeps_its_colours() -> None:
    expected = (rgb16() >> 8).astype(np.uint8)
    rgb = decoded("png_rgb16")
    assert np.abs(rgb.astype(np.int16) - expected).max() <= 1
    assert rgb.std() > 30


def test_float32_tiff_is_scaled_to_its_range() -> None:
    values = float32()
    expected = (values - values.min()) / (values.max() - values.min()) * 255
    grey = decoded("tiff_float32")[..., 0]
    assert np.abs(grey - expected).max() <= 1


def test_int32_tiff_keeps_its_tones_in_order() -> None:
    grey = decoded("tiff_int32")[..., 0].astype(np.float64)
    assert np.corrcoef(grey.ravel(), int32().ravel())[0, 1] > 0.99


def test_bilevel_png_is_black_and_white() -> None:
    assert set(np.unique(decoded("png_bilevel"))) == {0, 255}


def test_rgba_transparent_area_is_white_and_opaque_area_is_untouched() -> None:
    rgb = decoded("png_rgba")
    assert (rgb[TRANSPARENT_LEFT_HALF] == 255).all()  # the hidden colour there is black
    opaque = (slice(None), slice(TRANSPARENT_LEFT_HALF[1].stop, None))
    assert np.array_equal(rgb[opaque], photo()[opaque])


def test_la_transparent_area_is_white() -> None:
    rgb = decoded("png_la")
    assert (rgb[TRANSPARENT_TOP_HALF] == 255).all()  # the hidden grey there is 0
    opaque = (slice(TRANSPARENT_TOP_HALF[0].stop, None), slice(None))
    assert np.array_equal(rgb[opaque][..., 0], luma()[opaque])


def test_webp_alpha_transparent_area_is_white() -> None:
    rgb = decoded("webp_lossless_rgba")
    assert (rgb[TRANSPARENT_CORNER] == 255).all()  # the hidden colour there is black
    expected = np.asarray(half_photo()).copy()
    expected[TRANSPARENT_CORNER] = 255
    assert np.array_equal(rgb, expected)


def test_palette_transparency_is_white() -> None:
    rgb = decoded("png_palette_transparent")
    assert (rgb[TRANSPARENT_BLOCK] == 255).all()  # the palette colour there is pure green
    outside = rgb.copy()
    outside[TRANSPARENT_BLOCK] = photo()[TRANSPARENT_BLOCK]
    assert mean_abs_diff(outside, photo()) <= 6  # the rest is the quantized photo


def test_multiframe_gif_serves_its_first_frame() -> None:
    rgb = decoded("gif_multiframe")
    half = np.asarray(half_photo())
    assert mean_abs_diff(rgb, half) <= 6
    assert mean_abs_diff(rgb, 255 - half) > 60  # not the second frame (the negative)


@pytest.mark.parametrize("name", ["png_1x1", "jpeg_1x1"])
def test_one_pixel_image(name: str) -> None:
    assert np.abs(decoded(name)[0, 0].astype(int) - (200, 30, 40)).max() <= 6


def test_panorama_keeps_its_aspect() -> None:
    assert decoded("jpeg_panorama").shape == (300, 4000, 3)


JPEG_NAMES = sorted(n for n in VALID if imaging.sniff_format(VALID[n]()) == "JPEG")


@pytest.mark.parametrize("name", JPEG_NAMES)
def test_opencv_jpeg_path_equals_pil(name: str) -> None:
    """The fast path (OpenCV) gives PIL's pixels, orientation included; the rest goes through PIL."""
    data = VALID[name]()
    with Image.open(io.BytesIO(data)) as im:
        fast = imaging._opencv_jpeg(data, im)
        im.load()
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    if fast is None:
        assert im.mode != "RGB", f"{name}: a complete colour JPEG should take the OpenCV path"
        return
    assert fast.shape == reference.shape
    assert mean_abs_diff(fast[..., ::-1], reference) < 0.5


def test_colour_photos_take_the_opencv_path() -> None:
    taken = [n for n in JPEG_NAMES if decode(VALID[n]())._pixels.keys() == {"BGR"}]
    assert "jpeg" in taken and "jpeg_exif_orientation_6" in taken and len(taken) >= 8, taken


@pytest.mark.parametrize("name", ["jpeg", "png", "webp", "gif", "png_rgba", "jpeg_exif_orientation_6"])
def test_decode_is_deterministic(name: str) -> None:
    data = VALID[name]()
    copy = bytes(bytearray(data))
    first, second = decode(data), decode(data)
    assert np.array_equal(first.rgb, second.rgb)
    assert first.rgb is not second.rgb
    assert data == copy


# ---- broken images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_image_is_refused_with_its_4xx(name: str) -> None:
    make, status = BROKEN[name]
    assert 400 <= status < 500
    # Any exception other than ServiceError escapes pytest.raises and fails the test.
    with pytest.raises(ServiceError) as info:
        serve(make())
    assert info.value.status == status, info.value
    assert info.value.error and info.value.detail


@pytest.mark.parametrize("name", sorted(n for n, (_, status) in BROKEN.items() if status == 415))
def test_runner_refuses_unsupported_bytes_on_its_own(name: str) -> None:
    """decode() sniffs again, so a runner called without the front's check still answers 415."""
    with pytest.raises(ServiceError) as info:
        decode(BROKEN[name][0]())
    assert info.value.status == 415


def test_front_check_does_not_decode() -> None:
    """check_upload only looks at the signature: a truncated PNG passes it; the runner refuses it."""
    data = BROKEN["png_truncated_idat"][0]()
    assert check_upload(data).format == "PNG"
    with pytest.raises(ServiceError) as info:
        decode(data)
    assert info.value.status == 400


def test_unidentifiable_upload_never_triggers_a_package_install(autoinstall_calls: list) -> None:
    base_photo()  # ultralytics is imported, as in the runner
    for name in ("png_signature_garbage", "gif_header_only", "jpeg_header_only"):
        with pytest.raises(ServiceError):
            serve(BROKEN[name][0]())
    assert autoinstall_calls == []


def test_too_many_pixels_names_the_configured_limit() -> None:
    with pytest.raises(ServiceError) as info:
        serve(BROKEN["png_bomb_30000x30000"][0]())
    assert info.value.status == 413
    assert f"{settings().max_pixels}" in info.value.detail.replace(",", "").replace("_", "")


# ---- limits -----------------------------------------------------------------------------------------


def configure(monkeypatch: pytest.MonkeyPatch, **limits: int) -> None:
    """What setting YOLO_TOYS_MAX_* does, for imaging's reads of the settings."""
    configured = dataclasses.replace(settings(), **limits)
    monkeypatch.setattr(imaging, "settings", lambda: configured)


def test_upload_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, max_upload_bytes=1000)
    at_limit = b"\xff\xd8\xff" + bytes(997)
    assert check_upload(at_limit).format == "JPEG"
    with pytest.raises(ServiceError) as info:
        check_upload(at_limit + b"\x00")
    assert info.value.status == 413 and "1000" in info.value.detail
    with pytest.raises(ServiceError) as info:
        check_upload(VALID["jpeg"]())
    assert info.value.status == 413
    assert check_upload(VALID["jpeg_1x1"]()).format == "JPEG"  # 633 bytes


def test_upload_field_validator_reads_at_most_one_byte_over_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, max_upload_bytes=1000)
    small = VALID["jpeg_1x1"]()
    upload = types.SimpleNamespace(file=io.BytesIO(small), filename="tiny.jpg")
    assert imaging._read_upload(upload) == imaging.UploadedFile(small)

    big = io.BytesIO(VALID["jpeg"]())
    assert len(imaging._read_upload(types.SimpleNamespace(file=big, filename="big.jpg")).data) == 1001
    assert big.tell() == 1001
    with pytest.raises(ValueError, match="uploaded file"):
        imaging._read_upload("just a string")


def test_limits_come_from_the_environment() -> None:
    """Limits are read from the environment (a fresh interpreter here)."""
    script = """
import io
from PIL import Image
from yolo_toys import imaging
from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings

assert (settings().max_upload_bytes, settings().max_pixels) == (1000, 5000), settings()

def png(width, height):
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    return buf.getvalue()

for data in (b"\\xff\\xd8\\xff" + bytes(997), b"\\xff\\xd8\\xff" + bytes(998), png(50, 100), png(50, 101)):
    try:
        imaging.check_upload(data)
        print(imaging.decode(data).rgb.size // 3)
    except ServiceError as exc:
        print(exc.status)
"""
    env = {**os.environ, "YOLO_TOYS_MAX_UPLOAD_BYTES": "1000", "YOLO_TOYS_MAX_PIXELS": "5000"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # 1000 bytes pass the byte limit (then fail to decode); 1001 do not; 5000 pixels pass, 5050 do not.
    assert done.stdout.split() == ["400", "413", "5000", "413"], done.stdout


def test_max_pixels_argument_is_honoured() -> None:
    data = VALID["jpeg"]()
    pixels = PHOTO_SIZE[0] * PHOTO_SIZE[1]
    assert decode(data, max_pixels=pixels).rgb.shape == (PHOTO_SIZE[1], PHOTO_SIZE[0], 3)
    with pytest.raises(ServiceError) as info:
        decode(data, max_pixels=pixels - 1)
    assert info.value.status == 413 and str(pixels - 1) in info.value.detail
    assert decode(VALID["png_1x1"](), max_pixels=1).rgb.shape == (1, 1, 3)


def test_configured_pixel_limit_applies_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, max_pixels=100_000)
    with pytest.raises(ServiceError) as info:
        decode(VALID["jpeg"]())
    assert info.value.status == 413
    assert decode(VALID["jpeg_1x1"]()).rgb.shape == (1, 1, 3)


def test_max_pixels_argument_can_raise_the_configured_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # What YOLO_TOYS_MAX_PIXELS=500000 does.
    configure(monkeypatch, max_pixels=500_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)
    assert decode(VALID["jpeg"](), max_pixels=1_000_000).width == PHOTO_SIZE[0]  # 874,800 pixels
