#!/usr/bin/env bash
# Launch `python -m pretrain train` with torchrun, on one node or on several.
#
#   launch/torchrun.sh CONFIG [section.key=value ...]
#
# One node:   NPROC_PER_NODE=8 launch/torchrun.sh configs/glm-large.yaml
# Several:    run the same command on every node with NNODES, NODE_RANK and MASTER_ADDR set
#             (MASTER_PORT defaults to 29500), e.g. NNODES=4 NODE_RANK=1 MASTER_ADDR=node0 ...
# Keep parallel.tp <= NPROC_PER_NODE: tp is the inner mesh dimension, so TP stays inside a node.
# Both engines (parallel.engine: torch | deepspeed) launch this way; DeepSpeed joins the torchrun group.
# SIGTERM or SIGUSR1 to torchrun (or to the whole job) makes every rank save a checkpoint and exit 0;
# torchrun forwards the signal and SIGKILLs ranks still alive SHUTDOWN_TIMEOUT (default 100) s later,
# then exits 1 by design. docs/reliability.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/torchrun.sh CONFIG [section.key=value ...]}
shift
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
NPROC_PER_NODE=${NPROC_PER_NODE:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 2)}
NNODES=${NNODES:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ "$NNODES" = 1 ]; then
    RDZV=(--standalone)
else
    RDZV=(--nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK}" --rdzv_backend=c10d
          --rdzv_endpoint="${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" --rdzv_id="${RDZV_ID:-glm-pretrain}")
fi
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$NPROC_PER_NODE" \
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="${SHUTDOWN_TIMEOUT:-100}" \
    -m pretrain train --config "$CONFIG" "$@"
