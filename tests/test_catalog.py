"""models.catalog (the typed catalog) and models.store (`python -m models` against a real BentoML store).

BentoML fixes its home the first time it touches the store, so every store test runs the CLI in a
subprocess with BENTOML_HOME pointing at an empty directory of its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from conftest import ROOT, SHARED_WEIGHTS
from models import catalog as catalog_module
from models.catalog import DEFAULT_CATALOG, Catalog, parse_catalog
from yolo_toys.schemas import Task
from yolo_toys.settings import settings

# What BentoML accepts as a model name (bentoml._internal.tag: tag_fmt, tag_max_length).
BENTOML_NAME = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
BENTOML_NAME_MAX = 63

COCO_80 = 80
IMAGENET = 1000


# ---- the catalog ---------------------------------------------------------------------------------


def entry(name: str = "m", **overrides) -> dict:
    return {"name": name, "family": "ultralytics", "task": "detect", "sources": [{"local": f"{name}.pt"}],
            **overrides}  # fmt: skip


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shipped_catalog_parses() -> None:
    catalog = parse_catalog(DEFAULT_CATALOG)
    assert isinstance(catalog, Catalog)
    names = [m.name for m in catalog.models]
    assert {"yolo11n", "yolov8n", "yolo11n-seg", "yolov8n-pose", "yolo11n-cls", "yolo11n-obb"} <= set(names)
    assert len(names) == len(set(names))
    assert catalog.runner("ultralytics").max_batch_size >= 1


def test_shipped_catalog_has_one_default_per_task() -> None:
    catalog = parse_catalog(DEFAULT_CATALOG)
    for task in Task:
        defaults = [m.name for m in catalog.models if m.task == task and m.default]
        assert len(defaults) == 1, (task.value, defaults)


def test_shipped_catalog_names_are_store_names() -> None:
    for m in parse_catalog(DEFAULT_CATALOG).models:
        assert BENTOML_NAME.match(m.name) and len(m.name) <= BENTOML_NAME_MAX, m.name


def test_shipped_catalog_local_sources_exist() -> None:
    """Each Ultralytics local source names a file or folder of the shared weights (what the store tests
    import); transformers local sources are optional save_pretrained mirrors with a hub fallback."""
    assert SHARED_WEIGHTS is not None
    for m in parse_catalog(DEFAULT_CATALOG).models:
        if m.family == "transformers":
            assert [s.hub for s in m.sources if s.hub], m.name
            continue
        for source in m.sources:
            if source.local:
                assert (SHARED_WEIGHTS / source.local).exists(), (m.name, source.local)


def test_minimal_catalog_parses_with_defaults(tmp_path: Path) -> None:
    catalog = parse_catalog(write(tmp_path, {"models": [entry()]}))
    m = catalog.get("m")
    assert m is not None and catalog.get("nope") is None
    assert (m.default, m.device, m.half, m.max_batch_size) == (False, "auto", "auto", None)
    assert m.sources[0].describe() == "local:m.pt"
    assert catalog.family("ultralytics") == [m] and catalog.family("transformers") == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": [entry("a"), entry("b"), entry("a")]}, "twice"),
        ({"models": [entry("a", default=True), entry("b", default=True)]}, "more than one default"),
        ({"models": [entry("Bad Name")]}, "lower-case"),
        ({"models": [entry(sources=[{"local": "m.pt", "hub": "m.pt"}])]}, "exactly one"),
        ({"models": [entry(sources=[{}])]}, "exactly one"),
        ({"models": [entry(sources=[])]}, "sources"),
        ({"models": [entry(weights="m.pt")]}, "weights"),
        ({"models": [entry(sources=[{"local": "m.pt", "url": "http://x"}])]}, "url"),
        ({"models": [entry()], "extra": 1}, "extra"),
        ({"runners": {"ultralytics": {"max_batch_size": 4, "batch": 2}}, "models": [entry()]}, "batch"),
        ({"models": [entry(family="onnxruntime")]}, "family"),
        ({"runners": {"onnxruntime": {}}, "models": [entry()]}, "onnxruntime"),
        ({"models": [entry(task="thermal")]}, "task"),
    ],
    ids=["duplicate-name", "two-defaults", "bad-name", "local-and-hub", "no-source-kind", "no-sources",
         "unknown-entry-key", "unknown-source-key", "unknown-top-key", "unknown-runner-key", "unknown-family",
         "unknown-runner-family", "unknown-task"],
)  # fmt: skip
def test_parse_catalog_rejects(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_catalog(write(tmp_path, data))


def test_transformers_entries_need_a_matching_hf_task(tmp_path: Path) -> None:
    hf = {"family": "transformers", "sources": [{"hub": "org/model"}]}
    with pytest.raises(ValidationError, match="hf_task"):
        parse_catalog(write(tmp_path, {"models": [entry(**hf, task="detect")]}))
    with pytest.raises(ValidationError, match="serves task depth"):
        parse_catalog(write(tmp_path, {"models": [entry(**hf, task="detect", hf_task="depth-estimation")]}))
    with pytest.raises(ValidationError, match="hf_task"):
        parse_catalog(write(tmp_path, {"models": [entry(hf_task="object-detection")]}))  # on a YOLO entry
    ok = parse_catalog(write(tmp_path, {"models": [entry(**hf, task="detect", hf_task="zero-shot-object-detection")]}))
    assert ok.models[0].hf_task == "zero-shot-object-detection"


def test_two_defaults_for_different_tasks_are_fine(tmp_path: Path) -> None:
    catalog = parse_catalog(write(tmp_path, {"models": [entry("a", default=True),
                                                        entry("b", task="pose", default=True)]}))  # fmt: skip
    assert [m.name for m in catalog.models if m.default] == ["a", "b"]


def test_parse_catalog_rejects_a_name_too_long_for_bentoml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        parse_catalog(write(tmp_path, {"models": [entry("a" * (BENTOML_NAME_MAX + 1))]}))


def test_parse_catalog_rejects_an_empty_source(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        parse_catalog(write(tmp_path, {"models": [entry(sources=[{"local": ""}])]}))


def test_batching_caps_model_batch_at_the_runner(tmp_path: Path) -> None:
    data = {
        "runners": {"ultralytics": {"max_batch_size": 8, "max_latency_ms": 1234}},
        "models": [entry("small", max_batch_size=2), entry("big", max_batch_size=64), entry("unset")],
    }
    catalog = parse_catalog(write(tmp_path, data))
    sizes = {m.name: catalog.batching(m).max_batch_size for m in catalog.models}
    assert sizes == {"small": 2, "big": 8, "unset": 8}
    assert {catalog.batching(m).max_latency_ms for m in catalog.models} == {1234}


def test_gpu_batch_cap_replaces_the_cpu_cap_on_a_gpu(tmp_path: Path) -> None:
    data = {
        "runners": {"ultralytics": {"max_batch_size": 8, "gpu_max_batch_size": 32},
                    "transformers": {"max_batch_size": 4}},
        "models": [entry("small", max_batch_size=2), entry("unset"),
                   entry("vit", family="transformers", task="classify", hf_task="image-classification")],
    }  # fmt: skip
    catalog = parse_catalog(write(tmp_path, data))
    on_cpu = {m.name: catalog.batching(m).max_batch_size for m in catalog.models}
    on_gpu = {m.name: catalog.batching(m, on_gpu=True).max_batch_size for m in catalog.models}
    assert on_cpu == {"small": 2, "unset": 8, "vit": 4}
    assert on_gpu == {"small": 2, "unset": 32, "vit": 4}  # no GPU cap: the CPU one


def test_auto_workers_share_the_cores_of_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`workers: auto` is one worker per core the server may use (no NVIDIA GPU here), each runtime on its share."""
    from models.catalog import RunnerSettings

    assert not Path("/dev/nvidiactl").exists(), "this test describes a machine without an NVIDIA GPU"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    auto, two, one = RunnerSettings(workers="auto"), RunnerSettings(workers=2), RunnerSettings()
    assert [(s.worker_count(), s.cpu_threads()) for s in (auto, two, one)] == [(4, 1), (2, 2), (1, 4)]
    with pytest.raises(ValidationError):
        RunnerSettings(workers=0)
    with pytest.raises(ValidationError):
        RunnerSettings(workers="many")


def test_export_is_an_ultralytics_option(tmp_path: Path) -> None:
    bad = entry("vit", family="transformers", task="classify", hf_task="image-classification", export="engine")
    with pytest.raises(ValidationError, match="option of the ultralytics family only"):
        parse_catalog(write(tmp_path, {"models": [bad]}))


def test_batching_without_runner_settings_uses_the_defaults(tmp_path: Path) -> None:
    catalog = parse_catalog(write(tmp_path, {"models": [entry("big", max_batch_size=100)]}))
    defaults = catalog_module.RunnerSettings()
    info = catalog.batching(catalog.models[0])
    assert (info.max_batch_size, info.max_latency_ms) == (defaults.max_batch_size, defaults.max_latency_ms)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Set (or with None, unset) an environment variable; the settings are read again afterwards."""

    def set_env(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        settings.cache_clear()

    yield set_env
    settings.cache_clear()


def test_weights_dir_honours_the_environment(tmp_path: Path, env) -> None:
    env("YOLO_TOYS_WEIGHTS", str(tmp_path / "w"))
    assert catalog_module.weights_dir() == (tmp_path / "w").resolve()
    env("YOLO_TOYS_WEIGHTS", "")
    shared = catalog_module.PROJECT_ROOT.parent / "shared" / "weights"
    assert catalog_module.weights_dir() == (shared if shared.is_dir() else None)
    env("YOLO_TOYS_WEIGHTS", None)
    assert catalog_module.weights_dir() == (shared if shared.is_dir() else None)


def test_settings_are_read_once(tmp_path: Path, env, monkeypatch: pytest.MonkeyPatch) -> None:
    env("YOLO_TOYS_WEIGHTS", str(tmp_path / "w"))
    assert catalog_module.weights_dir() == (tmp_path / "w").resolve()
    monkeypatch.setenv("YOLO_TOYS_WEIGHTS", str(tmp_path / "other"))  # after the first read: not seen
    assert catalog_module.weights_dir() == (tmp_path / "w").resolve()


def test_catalog_path_honours_the_environment(tmp_path: Path, env) -> None:
    path = write(tmp_path, {"models": [entry("only-one")]})
    env("YOLO_TOYS_CATALOG", str(path))
    assert catalog_module.catalog_path() == path
    assert [m.name for m in catalog_module.load_catalog().models] == ["only-one"]
    env("YOLO_TOYS_CATALOG", None)
    assert catalog_module.catalog_path() == DEFAULT_CATALOG


# ---- digests -------------------------------------------------------------------------------------


def test_sha256_tree_and_combined_digest(tmp_path: Path) -> None:
    import hashlib

    from models.store import combined_digest, sha256_tree

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"\x00\x01\x02")
    (folder / "sub" / "b.xml").write_bytes(b"<xml/>")
    digests = sha256_tree(folder)
    assert digests == {"a.bin": hashlib.sha256(b"\x00\x01\x02").hexdigest(),
                       "sub/b.xml": hashlib.sha256(b"<xml/>").hexdigest()}  # fmt: skip
    assert sha256_tree(folder) == digests  # stable
    digest = combined_digest(digests)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert combined_digest(dict(reversed(list(digests.items())))) == digest  # order-independent

    # The same files written in another order, in another place, give the same digest.
    other = tmp_path / "elsewhere" / "model"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "b.xml").write_bytes(b"<xml/>")
    (other / "a.bin").write_bytes(b"\x00\x01\x02")
    assert combined_digest(sha256_tree(other)) == digest

    (folder / "a.bin").write_bytes(b"\x00\x01\x03")  # one byte changes
    assert combined_digest(sha256_tree(folder)) != digest
    (folder / "a.bin").write_bytes(b"\x00\x01\x02")
    assert combined_digest(sha256_tree(folder)) == digest
    (folder / "sub" / "b.xml").rename(folder / "sub" / "c.xml")  # a file is renamed
    assert combined_digest(sha256_tree(folder)) != digest

    single = folder / "a.bin"  # a single file is keyed by its name
    assert sha256_tree(single) == {"a.bin": digests["a.bin"]}


# ---- the model store, through `python -m models` ------------------------------------------------


def run_models(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def row(proc: subprocess.CompletedProcess, name: str) -> str:
    """The summary line `python -m models import` prints for one model."""
    lines = [line for line in proc.stdout.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


READ_STORE = """
import json, os, sys
import bentoml
out = {}
for name in sys.argv[1:]:
    m = bentoml.models.get(name + ":latest")
    files = sorted(os.path.relpath(os.path.join(d, f), m.path) for d, _, fs in os.walk(m.path) for f in fs)
    out[name] = {"tag": str(m.tag), "metadata": m.info.metadata, "files": files}
print(json.dumps(out))
"""


def read_store(env: dict[str, str], *names: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", READ_STORE, *names], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def manifest() -> dict[str, dict[str, str]]:
    """MANIFEST.md's sha256 list, as {folder: {file: sha256}}."""
    text = (SHARED_WEIGHTS / "MANIFEST.md").read_text()
    folders: dict[str, dict[str, str]] = {}
    for sha, path in re.findall(r"^([0-9a-f]{64})\s+\./(\S+)$", text, flags=re.MULTILINE):
        folder, _, file = path.partition("/")
        folders.setdefault(folder, {})[file] = sha
    assert folders, "no sha256 list in MANIFEST.md"
    return folders


@pytest.fixture(scope="module")
def store_env(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**test_env, "BENTOML_HOME": str(tmp_path_factory.mktemp("store_home"))}


@pytest.fixture(scope="module")
def first_import(store_env: dict[str, str]) -> subprocess.CompletedProcess:
    home = Path(store_env["BENTOML_HOME"])
    assert not (home / "models").exists() or not any((home / "models").iterdir()), "store not empty"
    return run_models(store_env, "import", "yolov8n", "yolo11n-cls", "yolo11n-obb")


@pytest.fixture(scope="module")
def second_import(store_env: dict[str, str], first_import) -> subprocess.CompletedProcess:
    return run_models(store_env, "import", "yolov8n")


@pytest.fixture(scope="module")
def listing(store_env: dict[str, str], first_import) -> subprocess.CompletedProcess:
    return run_models(store_env, "list")


@pytest.fixture(scope="module")
def stored_info(store_env: dict[str, str], first_import) -> dict:
    return read_store(store_env, "yolov8n", "yolo11n-cls")


def first_tag(first_import: subprocess.CompletedProcess, name: str) -> str:
    match = re.search(rf"\s({re.escape(name)}:[a-z0-9]+)\s", row(first_import, name))
    assert match, row(first_import, name)
    return match.group(1)


def test_import_puts_yolov8n_into_the_store(first_import: subprocess.CompletedProcess) -> None:
    assert first_import.returncode == 0, first_import.stdout + first_import.stderr
    assert re.fullmatch(r"yolov8n\s+imported\s+yolov8n:[a-z0-9]+\s+local:yolov8n_int8_openvino_model",
                        row(first_import, "yolov8n").strip()), first_import.stdout  # fmt: skip
    assert f"weights directory: {SHARED_WEIGHTS}" in first_import.stdout


def test_second_import_is_up_to_date(first_import, second_import: subprocess.CompletedProcess) -> None:
    assert second_import.returncode == 0, second_import.stderr
    line = row(second_import, "yolov8n")
    assert re.search(r"\bup to date\b", line), line
    assert first_tag(first_import, "yolov8n") in line  # the same stored version, not a new one


def test_list_shows_the_stored_tag(first_import, listing: subprocess.CompletedProcess) -> None:
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert f"{first_tag(first_import, 'yolov8n')} (local:yolov8n_int8_openvino_model)" in lines["yolov8n"]
    assert "detect" in lines["yolov8n"]
    assert "not imported" in lines["yolo11n"]
    assert "not imported" in lines["yolo11n-obb"]


def test_stored_metadata_of_an_openvino_export(first_import, stored_info: dict) -> None:
    from models.store import combined_digest

    info = stored_info["yolov8n"]
    assert info["tag"] == first_tag(first_import, "yolov8n")
    md = info["metadata"]
    assert {"family", "task", "source", "entry", "sha256", "files_sha256", "class_names"} <= set(md)
    assert (md["family"], md["task"]) == ("ultralytics", "detect")
    assert md["source"] == "local:yolov8n_int8_openvino_model"
    assert md["entry"] == "yolov8n_int8_openvino_model"
    expected = manifest()["yolov8n_int8_openvino_model"]
    assert len(expected) == 3
    assert md["files_sha256"] == expected
    assert md["sha256"] == combined_digest(expected)
    # The export folder is stored whole, beside BentoML's own model.yaml.
    assert {f"yolov8n_int8_openvino_model/{f}" for f in expected} <= set(info["files"])
    names = md["class_names"]
    assert len(names) == COCO_80
    assert sorted(int(k) for k in names) == list(range(COCO_80))
    assert names["0"] == "person" and names["5"] == "bus"


def test_tflite_classifier_is_stored_with_its_folder(first_import, stored_info: dict) -> None:
    line = row(first_import, "yolo11n-cls")
    assert re.search(r"\bimported\b", line), line
    md = stored_info["yolo11n-cls"]["metadata"]
    assert md["task"] == "classify"
    assert md["entry"].endswith(".tflite")
    assert md["entry"] == "yolo11n-cls_saved_model/yolo11n-cls_int8.tflite"
    files = set(stored_info["yolo11n-cls"]["files"])
    assert md["entry"] in files
    assert str(Path(md["entry"]).parent / "metadata.yaml") in files
    assert md["files_sha256"] == manifest()["yolo11n-cls_saved_model"]
    names = md["class_names"]
    assert len(names) == IMAGENET
    assert sorted(int(k) for k in names) == list(range(IMAGENET))


def test_hub_only_model_is_skipped_offline(first_import: subprocess.CompletedProcess) -> None:
    assert first_import.returncode == 0
    line = row(first_import, "yolo11n-obb")
    name, status, reason = line.split(None, 2)
    assert (name, status) == ("yolo11n-obb", "skipped")
    assert "yolo11n-obb.pt" in reason
    assert reason.startswith("hub:yolo11n-obb.pt")
    assert "Traceback" not in first_import.stdout


def test_force_reimports(store_env, first_import, second_import, listing, stored_info) -> None:
    """Runs after the fixtures above have looked at the first version."""
    proc = run_models(store_env, "import", "--force", "yolov8n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = row(proc, "yolov8n")
    assert re.search(r"\bimported\b", line), line
    new_tag = re.search(r"(yolov8n:[a-z0-9]+)", line).group(1)
    assert new_tag != first_tag(first_import, "yolov8n")


def test_unknown_name_exits_2_listing_the_catalog(store_env: dict[str, str]) -> None:
    proc = run_models(store_env, "import", "yolov8n", "no-such-model")
    assert proc.returncode == 2
    assert "no-such-model" in proc.stderr
    for m in parse_catalog(Path(store_env["YOLO_TOYS_CATALOG"])).models:
        assert m.name in proc.stderr
    assert "imported" not in proc.stdout and "up to date" not in proc.stdout


@pytest.fixture(scope="module")
def wrong_task_import(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """A catalog that calls detection weights `pose`: an OpenVINO export and a PyTorch checkpoint."""
    tmp = tmp_path_factory.mktemp("wrong_task")
    test_catalog = parse_catalog(Path(test_env["YOLO_TOYS_CATALOG"]))
    random_pt = test_catalog.get("rand-yolov8n").sources[0].local  # built by the test_env fixture
    data = {"models": [
        entry("ov-as-pose", task="pose", sources=[{"local": "yolov8n_int8_openvino_model"}]),
        entry("pt-as-pose", task="pose", sources=[{"local": random_pt}]),
        entry("pt-to-engine", export="engine", sources=[{"local": random_pt}]),
    ]}  # fmt: skip
    env = {**test_env, "BENTOML_HOME": str(tmp / "home"), "YOLO_TOYS_CATALOG": str(write(tmp, data))}
    return run_models(env, "import")


def test_pytorch_weights_for_another_task_are_skipped(wrong_task_import: subprocess.CompletedProcess) -> None:
    assert wrong_task_import.returncode == 0, wrong_task_import.stdout + wrong_task_import.stderr
    _, status, reason = row(wrong_task_import, "pt-as-pose").split(None, 2)
    assert status == "skipped"
    assert "detect" in reason and "pose" in reason


def test_exported_weights_for_another_task_are_skipped(wrong_task_import: subprocess.CompletedProcess) -> None:
    assert wrong_task_import.returncode == 0, wrong_task_import.stdout + wrong_task_import.stderr
    _, status, reason = row(wrong_task_import, "ov-as-pose").split(None, 2)
    assert status == "skipped"
    assert "detect" in reason and "pose" in reason


def test_tensorrt_export_without_a_gpu_is_skipped_with_its_reason(wrong_task_import) -> None:
    assert wrong_task_import.returncode == 0, wrong_task_import.stdout + wrong_task_import.stderr
    _, status, reason = row(wrong_task_import, "pt-to-engine").split(None, 2)
    assert status == "skipped"
    assert "TensorRT export needs a CUDA GPU" in reason


def test_import_with_an_empty_catalog(test_env: dict[str, str], tmp_path: Path) -> None:
    env = {**test_env, "BENTOML_HOME": str(tmp_path / "home"), "YOLO_TOYS_CATALOG": str(write(tmp_path, {"models": []}))}
    proc = run_models(env, "import")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
