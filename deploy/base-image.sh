#!/usr/bin/env bash
# Builds a stand-in for the base image a Bento's Dockerfile names (`FROM python:3.11-slim`) from
# Debian packages, for machines that reach Debian and PyPI but no container registry.
#
#   deploy/base-image.sh IMAGE            e.g. deploy/base-image.sh python:3.11-slim
#
# The rootfs is `debootstrap --variant=minbase` of the Debian release whose python3 is the one the
# image name asks for, plus python3, venv, pip and ca-certificates, packed as one layer and tagged
# IMAGE (docker.io/library/... for short names), so that `bentoml containerize` finds it locally.
#
# Network quirk, this path only: where HTTPS is intercepted, the build steps inside the image
# (`pip install uv`, `uv pip install`) must trust the interception CA. HOST_CA_BUNDLE (default: this
# host's /etc/ssl/certs/ca-certificates.crt) is copied to /etc/ssl/host-ca-bundle.crt and named by
# SSL_CERT_FILE, REQUESTS_CA_BUNDLE and PIP_CERT; these stay in the final image's environment.
# HOST_CA_BUNDLE= (empty) leaves the base with Debian's own trust store only.
#
# Environment: ENGINE (buildah, docker or podman; default buildah), DEBIAN_MIRROR, HOST_CA_BUNDLE.
set -euo pipefail

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 IMAGE   (the name the Dockerfile's FROM gives, e.g. python:3.11-slim)"
image=$1
engine=${ENGINE:-buildah}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}

# A short name is Docker Hub's library; buildah resolves `FROM python:...` against the local copy
# only when the stored name is the fully qualified one.
case $image in
    */*/*) full=$image ;;
    */*) full=docker.io/$image ;;
    *) full=docker.io/library/$image ;;
esac

# Only the python images have a Debian equivalent: the release whose python3 has that version.
python_version=$(sed -nE 's#^(.*/)?python:([0-9]+\.[0-9]+).*$#\2#p' <<<"$image")
case $python_version in
    3.11) suite=bookworm ;;
    3.13) suite=trixie ;;
    *) die "no Debian release ships python '$python_version' as python3 (image $image); build the base elsewhere" ;;
esac

[[ $(id -u) = 0 ]] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "debootstrap missing: install it from your distribution"
    log "installing Debian's debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi
command -v "$engine" >/dev/null || die "$engine missing"

work=$(mktemp -d /var/tmp/yolo-toys-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

log "debootstrap $suite (minbase + python3) from $mirror into $rootfs"
started=$SECONDS
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
}
log "debootstrap done in $((SECONDS - started)) s"

# The same apt sources as Debian's own images (updates and security too).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
# What Debian's official "slim" images configure (debuerreotype), hence every python:*-slim: apt
# keeps no .deb files and no translations, keeps its lists compressed, and dpkg installs no docs,
# manuals or locales. Without these the Dockerfile's apt-get steps leave ~330 MB more in the image.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
slim_excludes=(/usr/share/doc /usr/share/groff /usr/share/info /usr/share/linda /usr/share/lintian/overrides
    /usr/share/locale /usr/share/man)
{
    printf 'path-exclude %s/*\n' "${slim_excludes[@]}"
    echo 'path-include /usr/share/doc/*/copyright'
} >"$rootfs/etc/dpkg/dpkg.cfg.d/docker"
for dir in "${slim_excludes[@]}"; do
    [[ -d $rootfs$dir ]] || continue
    find "$rootfs$dir" -mindepth 1 -not -type d -not -path '*/doc/*/copyright' -delete
    find "$rootfs$dir" -mindepth 1 -type d -empty -delete
done
# No service starts during an image build's `apt-get install`.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
# python:*-slim lets `pip install` write to the system Python (the Dockerfile's `pip install uv`);
# Debian's python3 refuses that (PEP 668) unless this marker is gone.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log

ca_env=()
if [[ -n $ca_bundle ]]; then
    [[ -r $ca_bundle ]] || die "HOST_CA_BUNDLE $ca_bundle not readable"
    log "trusting $ca_bundle inside the image (intercepted HTTPS): /etc/ssl/host-ca-bundle.crt"
    install -m 0644 "$ca_bundle" "$rootfs/etc/ssl/host-ca-bundle.crt"
    for var in SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT; do
        ca_env+=("ENV $var=/etc/ssl/host-ca-bundle.crt")
    done
fi

log "packing the rootfs"
tar --numeric-owner --xattrs -C "$rootfs" -cf "$work/rootfs.tar" .
rm -rf "$rootfs"

{
    echo "FROM scratch"
    echo "ADD rootfs.tar /"
    echo "ENV LANG=C.UTF-8"
    echo "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    printf '%s\n' "${ca_env[@]}"
    echo "LABEL org.opencontainers.image.description=\"stand-in for $full: Debian $suite minbase + python3 (deploy/base-image.sh)\""
    echo "LABEL io.github.yolo-toys.base-image=debootstrap-$suite"
    echo 'CMD ["python3"]'
} >"$work/Containerfile"

log "building $full with $engine"
case $engine in
    buildah) buildah build --isolation chroot -f "$work/Containerfile" -t "$full" "$work" >&2 ;;
    docker | podman) "$engine" build -f "$work/Containerfile" -t "$full" "$work" >&2 ;;
    *) die "unknown engine $engine" ;;
esac
log "tagged $full"
