# Sourced by the run scripts: sets LAUNCH to `python` or, with NPROC > 1, to torchrun.
# Multi-node: also set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as torchrun expects.
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ] || [ "${NNODES:-1}" -gt 1 ]; then
  LAUNCH="torchrun --nproc_per_node $NPROC --nnodes ${NNODES:-1} --node_rank ${NODE_RANK:-0} \
--master_addr ${MASTER_ADDR:-127.0.0.1} --master_port ${MASTER_PORT:-29500}"
else
  LAUNCH="python"
fi
