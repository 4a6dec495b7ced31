#!/usr/bin/env bash
# The Bento as an OCI image, with whichever engine this machine has (`make container`).
#
#   deploy/container.sh [--cpu] [--offline-base]
#
# Default: containerizes the Bento yolo-toys:latest (`make build` makes it) into the images
# yolo-toys:latest and yolo-toys:<bento version>. Torch is the registry's CUDA build.
# --cpu           builds the Bento yolo-toys-cpu from bentofile.yaml with torch/torchvision taken
#                 from the PyTorch CPU index, then the images yolo-toys-cpu:latest and :<version>.
# --offline-base  when the base image the Dockerfile names is not stored locally, builds a
#                 stand-in from Debian (deploy/base-image.sh) without trying to pull it. Without
#                 the flag, a missing base is pulled, and the stand-in built only when that fails.
#
# Engine: ENGINE=docker|buildah|podman, else docker when `docker info` answers (a daemon), else
# buildah (daemonless), else podman. BENTOML (default .venv/bin/bentoml) is the CLI to use.
set -euo pipefail

log() { printf '[container] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cd "$(dirname "$0")/.."
BENTOML=${BENTOML:-.venv/bin/bentoml}
PYTORCH_CPU_INDEX=${PYTORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

cpu=0 offline_base=0
for arg in "$@"; do
    case $arg in
        --cpu) cpu=1 ;;
        --offline-base) offline_base=1 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown option $arg (see --help)" ;;
    esac
done
[[ -x $BENTOML ]] || die "$BENTOML missing: run \`make venv\`"

pick_engine() {
    if [[ -n ${ENGINE:-} ]]; then
        echo "$ENGINE"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v buildah >/dev/null; then
        echo buildah
    elif command -v podman >/dev/null; then
        echo podman
    elif [[ $(id -u) = 0 ]] && command -v apt-get >/dev/null; then
        # A Debian machine with no engine (this project's CI kind): buildah needs no daemon.
        log "no container engine: installing Debian's buildah"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2
        echo buildah
    else
        die "no container engine: install Docker, or buildah (apt-get install -y buildah)"
    fi
}
engine=$(pick_engine)
export ENGINE=$engine
if [[ $engine = buildah ]]; then
    # Builds inside a container (CI, this kind of machine) have no user namespaces for runc;
    # chroot isolation needs none.
    export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
    # Keep each Dockerfile step as a layer, as Docker does: a rebuild after a code change reuses
    # the ~6 GB `uv pip install` layer (seconds instead of minutes). Not on vfs storage (no
    # overlayfs), where every layer is a full copy of the image's files.
    driver=$(buildah info --format '{{.store.GraphDriverName}}' 2>/dev/null || echo unknown)
    [[ $driver = vfs ]] && layers=false || layers=true
    export BUILDAH_LAYERS=${BUILDAH_LAYERS:-$layers}
    log "engine: buildah (isolation $BUILDAH_ISOLATION, storage $driver, layers $BUILDAH_LAYERS)"
else
    log "engine: $engine"
fi

inspect_image() {
    case $engine in
        buildah) buildah inspect --type image "$1" ;;
        *) "$engine" image inspect "$1" ;;
    esac
}
has_image() { inspect_image "$1" >/dev/null 2>&1; }

if [[ $cpu = 1 ]]; then
    # Derived from bentofile.yaml at build time, so that the two never drift apart. uv takes a
    # package from the first index that has it; unsafe-best-match lets the pinned versions of
    # everything else still come from PyPI.
    bentofile=$(mktemp --suffix=-bentofile-cpu.yaml)
    trap 'rm -f "$bentofile"' EXIT
    "$(dirname "$BENTOML")/python" - "$bentofile" "$PYTORCH_CPU_INDEX" <<'EOF'
import sys
import yaml

out, index = sys.argv[1:]
with open("bentofile.yaml") as f:
    config = yaml.safe_load(f)
config["name"] += "-cpu"
config["python"]["extra_index_url"] = [index]
config.setdefault("envs", []).append({"name": "UV_INDEX_STRATEGY", "value": "unsafe-best-match"})
with open(out, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF
    log "bentoml build (CPU torch from $PYTORCH_CPU_INDEX)"
    "$BENTOML" build -f "$bentofile" . >&2
    bento=yolo-toys-cpu:latest
else
    bento=yolo-toys:latest
fi

bento_dir=$("$BENTOML" get "$bento" -o path 2>/dev/null) || die "no Bento $bento: run \`make build\` first"
name=$(basename "$(dirname "$bento_dir")")
version=$(basename "$bento_dir")
base=$(sed -nE 's/^FROM[[:space:]]+([^[:space:]]+).*/\1/p' "$bento_dir/env/docker/Dockerfile" | head -n 1)
[[ -n $base ]] || die "no FROM line in $bento_dir/env/docker/Dockerfile"
log "Bento $name:$version, base image $base"

build_base() {
    log "building a stand-in for $base from Debian packages (deploy/base-image.sh)"
    deploy/base-image.sh "$base"
}
# A local base is used as is, as `docker build` does; a stand-in stays until removed
# (`$engine rmi $base`), after which a reachable registry's base is pulled again.
if has_image "$base"; then
    if inspect_image "$base" 2>/dev/null | grep -q io.github.yolo-toys.base-image; then
        log "base $base: the local stand-in built by deploy/base-image.sh"
    else
        log "base $base: present locally"
    fi
elif [[ $offline_base = 1 ]]; then
    build_base
elif "$engine" pull "$base" >&2; then
    log "pulled $base"
else
    log "cannot pull $base (no registry reachable?)"
    build_base
fi

log "bentoml containerize $name:$version --backend $engine -t $name:latest -t $name:$version"
started=$SECONDS
"$BENTOML" containerize "$name:$version" --backend "$engine" -t "$name:latest" -t "$name:$version" >&2 ||
    die "bentoml containerize failed (output above)"
has_image "$name:$version" || die "bentoml containerize made no image $name:$version (output above)"
case $engine in
    buildah) size=$(buildah images --format '{{.Size}}' "$name:latest" | head -n 1) ;;
    *) size=$("$engine" image ls --format '{{.Size}}' "$name:latest" | head -n 1) ;;
esac
log "image $name:latest ($name:$version): $size, built in $((SECONDS - started)) s"
