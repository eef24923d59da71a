#!/usr/bin/env bash
# Build a Debian base image without any registry: debootstrap a minimal bookworm from the
# host's Debian mirror, then `docker import` it.
#
#   bash docker/make_base.sh [IMAGE]          # default IMAGE: pfl_dist-base:bookworm
#
# The root file system has Python 3.11 with venv (what the Dockerfile's stages need) and
# Debian's dataset-fashion-mnist (the image experiments read /usr/share/datasets/fashion-mnist).
# MIRROR overrides the mirror; by default it is the first `URIs:` of the host's Debian sources.
set -euo pipefail
IMAGE="${1:-pfl_dist-base:bookworm}"
SUITE="${SUITE:-bookworm}"
PACKAGES="python3,python3-venv,dataset-fashion-mnist"

fail() { echo "pfl_dist: error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || fail "docker-base needs root (debootstrap and docker import)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
command -v docker >/dev/null || fail "docker is not installed (apt-get install docker.io)"

if [ -z "${MIRROR:-}" ]; then
    MIRROR="$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- '-security' | head -n 1 | cut -d' ' -f1)"
    if [ -z "$MIRROR" ]; then
        MIRROR="$(awk '$1 == "deb" && $2 !~ /^\[/ && $3 !~ /security/ {print $2; exit}' \
            /etc/apt/sources.list 2>/dev/null || true)"
    fi
fi
[ -n "$MIRROR" ] || fail "no Debian mirror found in /etc/apt/sources.list{,.d}; set MIRROR=URL"

ROOTFS="$(mktemp -d /tmp/pfl_dist-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "docker-base: debootstrap $SUITE from $MIRROR (about 40 s)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -n 20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; fail "debootstrap failed (log above)"; }
rm -f "$ROOTFS.log"
# Package lists and caches are not needed at run time; an apt-get in a later stage updates first.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "docker-base: $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
