#!/usr/bin/env bash
# Run pfl_dist on this machine: one torchrun agent (--standalone) with NPROC_PER_NODE ranks.
# pfl_dist.launch replaces --standalone by a rendezvous it hosts on 127.0.0.1: torchrun's own
# --standalone store would listen on every interface.
#
#   launch/local.sh [torchrun options] [--config FILE] [section.key=value ...]
#
#   launch/local.sh                                          # configs/default.yaml, 4 ranks
#   NPROC_PER_NODE=2 launch/local.sh --config configs/X.yaml algorithm.lam=0.1
#   launch/local.sh --max-restarts=2 train.num_rounds=10
#
# Environment:
#   NPROC_PER_NODE   ranks on this machine (default 4, one per client of the default config)
#   OMP_NUM_THREADS  intra-op threads per rank (default: cores / ranks, at least 1)
#   PYTHON           interpreter with torch and pfl_dist (default: the repo's .venv, else python3)
#
# All arguments pass through to `python -m pfl_dist.launch`, which checks the config before
# any process starts (one clear line, exit code 2, on bad input) and then runs torchrun.
# Without --config the default config is used.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPROC_PER_NODE="${NPROC_PER_NODE:-4}"
# shellcheck source=launch/_env.sh
source "$REPO/launch/_env.sh"

config_args=(--config "$REPO/configs/default.yaml")
for arg in "$@"; do
    if [[ "$arg" == --config || "$arg" == --config=* ]]; then config_args=(); fi
done

exec "$PYTHON" -m pfl_dist.launch --standalone --nproc-per-node="$NPROC_PER_NODE" \
    "${config_args[@]}" "$@"
