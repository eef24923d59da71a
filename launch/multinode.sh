#!/usr/bin/env bash
# Run one node of a multi-node pfl_dist job: one torchrun agent per machine, all joined by a
# c10d rendezvous whose store runs on node 0. Start it on every node, in any order:
#
#   node 0:  NODE_RANK=0 MASTER_ADDR=10.0.0.1 NNODES=3 launch/multinode.sh --config configs/X.yaml [k=v ...]
#   node 1:  NODE_RANK=1 MASTER_ADDR=10.0.0.1 NNODES=3 launch/multinode.sh --config configs/X.yaml [k=v ...]
#   node 2:  NODE_RANK=2 MASTER_ADDR=10.0.0.1 NNODES=3 launch/multinode.sh --config configs/X.yaml [k=v ...]
#
# Every node must get the same config and overrides. Script options (before the rest):
#   --rdzv-timeout SECONDS  how long the nodes wait for all NNODES to join (join_timeout)
# Everything else passes through to `python -m pfl_dist.launch` (torchrun options, --config,
# section.key=value overrides); it validates the config on each node before starting workers.
#
# Environment:
#   NODE_RANK           0 on the node that hosts the rendezvous store (required). Global ranks
#                       are assigned by the rendezvous (sorted by node address), not by this.
#   MASTER_ADDR         address or name of node 0, reachable from every node (required)
#   MASTER_PORT         rendezvous port on node 0 (default 29400)
#   NNODES              number of nodes, or MIN:MAX for an elastic job (default 1)
#   NPROC_PER_NODE      ranks per node (default 1)
#   RDZV_ID             job id, the same on all nodes and new for each job (default pfl)
#   RDZV_TIMEOUT        default for --rdzv-timeout, in seconds (default 900)
#   MAX_RESTARTS        worker-group restarts after a failure (default 3); with
#                       checkpoint.every > 0 the job resumes from its newest checkpoint
#   LOCAL_ADDR          this node's address as the other nodes reach it (default: the
#                       hostname). Set it when the hostname resolves to the wrong interface.
#   GLOO_SOCKET_IFNAME  interface gloo uses, e.g. eth0; its tx_bytes give wire_bytes_measured
#   OMP_NUM_THREADS     intra-op threads per rank (default: cores / NPROC_PER_NODE, at least 1)
#   PYTHON              interpreter with torch and pfl_dist (default: the repo's .venv, else python3)
#   PFL_SIGNAL_EVERY_PROCESS  1 when a stop signal reaches every process of the job, not only this
#                       script's launcher (a Slurm step; launch/slurm.sbatch sets it): the launcher
#                       then passes nothing on (docs/RELIABILITY.md)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "multinode.sh: error: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RDZV_TIMEOUT="${RDZV_TIMEOUT:-900}"
passthrough=()
while (( $# )); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --rdzv-timeout) (( $# >= 2 )) || die "--rdzv-timeout needs seconds"; RDZV_TIMEOUT="$2"; shift 2 ;;
        --rdzv-timeout=*) RDZV_TIMEOUT="${1#*=}"; shift ;;
        *) passthrough+=("$1"); shift ;;
    esac
done

[[ -n "${NODE_RANK:-}" ]] || die "NODE_RANK is not set (0 on the node that hosts the rendezvous)"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] || die "NODE_RANK must be a number, got '$NODE_RANK'"
[[ -n "${MASTER_ADDR:-}" ]] || die "MASTER_ADDR is not set (the address of node 0)"
[[ "$RDZV_TIMEOUT" =~ ^[0-9]+$ ]] || die "--rdzv-timeout must be whole seconds, got '$RDZV_TIMEOUT'"
MASTER_PORT="${MASTER_PORT:-29400}"
NNODES="${NNODES:-1}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
RDZV_ID="${RDZV_ID:-pfl}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
# shellcheck source=launch/_env.sh
source "$REPO/launch/_env.sh"

# Node 0 runs the rendezvous store; the others must not try to (is_host=false skips
# torchrun's guess from the hostname).
if [[ "$NODE_RANK" == 0 ]]; then is_host=true; else is_host=false; fi
torchrun_args=(
    --nnodes="$NNODES"
    --nproc-per-node="$NPROC_PER_NODE"
    --rdzv-backend=c10d
    --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
    --rdzv-id="$RDZV_ID"
    --rdzv-conf="is_host=$is_host,join_timeout=$RDZV_TIMEOUT"
    --max-restarts="$MAX_RESTARTS"
)
if [[ -n "${LOCAL_ADDR:-}" ]]; then torchrun_args+=(--local-addr="$LOCAL_ADDR"); fi

echo "multinode.sh: node $NODE_RANK of $NNODES, $NPROC_PER_NODE rank(s), rendezvous $MASTER_ADDR:$MASTER_PORT" \
     "(id $RDZV_ID, join timeout ${RDZV_TIMEOUT}s)" >&2
exec "$PYTHON" -m pfl_dist.launch "${torchrun_args[@]}" "${passthrough[@]}"
