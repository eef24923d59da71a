#!/usr/bin/env bash
# Offline image build: no registry pull, no package index inside the build.
#
#   bash docker/build_image.sh [IMAGE]        # default IMAGE: pfl_dist:cpu
#
# 1. BASE_IMAGE (default pfl_dist-base:bookworm) is made with docker/make_base.sh when missing.
# 2. docker/wheelhouse gets every wheel the image needs, from `pip download` through the host's
#    pip configuration (indexes, find-links, constraints), plus the build backend (setuptools,
#    wheel) that `pip install .` needs offline. Wheels already there are reused; a wheelhouse that
#    already holds everything is used without asking the indexes.
# 3. `docker build --build-arg OFFLINE=1`: pip installs with --no-index --find-links.
# PYTHON is the host interpreter that runs pip (default: .venv/bin/python, else python3); its
# Python version must be the base image's (both 3.11 on bookworm), which is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${1:-pfl_dist:cpu}"
BASE_IMAGE="${BASE_IMAGE:-pfl_dist-base:bookworm}"
WHEELHOUSE=docker/wheelhouse
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

fail() { echo "pfl_dist: error: $*" >&2; exit 2; }
command -v docker >/dev/null || fail "docker is not installed (apt-get install docker.io)"

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" = pfl_dist-base:bookworm ]; then
        bash docker/make_base.sh "$BASE_IMAGE"
    else
        fail "base image $BASE_IMAGE is missing (docker pull it, or unset BASE_IMAGE to make one)"
    fi
fi

version='import sys; print("%d.%d" % sys.version_info[:2])'
base_python="$(docker run --rm --network none "$BASE_IMAGE" python3 -c "$version")" \
    || fail "$BASE_IMAGE has no python3"
host_python="$("$PYTHON" -c "$version")"
[ "$base_python" = "$host_python" ] \
    || fail "$PYTHON is Python $host_python but $BASE_IMAGE has $base_python: pip download needs the same (set PYTHON)"

started=$(date +%s)
mkdir -p "$WHEELHOUSE"
# A wheelhouse that already holds everything (a second build, every test session after the first)
# is used as it is: resolving it offline takes seconds, asking the indexes again much longer.
if "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-index \
        --find-links "$WHEELHOUSE" -d "$WHEELHOUSE" -r requirements.txt setuptools wheel >/dev/null 2>&1; then
    reused=" (complete: reused)"
else
    reused=""
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        -d "$WHEELHOUSE" -r requirements.txt setuptools wheel 2> >(grep -v "^WARNING: Location" >&2) \
        || fail "pip download failed (see above)"
fi
echo "docker-image: wheelhouse $WHEELHOUSE$reused: $(ls "$WHEELHOUSE" | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1) ($(($(date +%s) - started)) s)"

started=$(date +%s)
# The legacy builder: docker-compose 1.x builds with it too, and BuildKit may be absent.
DOCKER_BUILDKIT=0 docker build --quiet -f docker/Dockerfile -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg OFFLINE=1 . >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "docker-image: $IMAGE built in $(($(date +%s) - started)) s, $((size / 1000000)) MB"
