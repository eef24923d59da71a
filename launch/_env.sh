# Shared environment of the launch scripts; sourced with REPO and NPROC_PER_NODE set.
#   PYTHON           interpreter with torch and pfl_dist (default: the repo's .venv, else python3)
#   OMP_NUM_THREADS  intra-op threads per rank (default: cores / NPROC_PER_NODE, at least 1)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

cores="$(nproc 2>/dev/null || echo 1)"
threads=$(( cores / NPROC_PER_NODE ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}"
# torch 2.13: an elastic restart of a gloo group cannot reconnect without this.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
