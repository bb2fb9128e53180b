# Shared by device1.sh and device2.sh: where the programs are and the settings both devices use.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

# The installed programs when they are on PATH (npm install -g @meshnet/node ...), else this
# checkout's sources (after `pnpm install`).
program() {
  if command -v "$1" >/dev/null 2>&1; then echo "$1"
  else echo "node --conditions=meshnet-source $repo/apps/$2/src/bin.ts"; fi
}
MESH=$(program mesh node)
MESH_RELAY=$(program mesh-relay relay)
MESH_CONTROL_PLANE=$(program mesh-control-plane control-plane)

NETWORK_ID=${NETWORK_ID:-test-network}
POOL_NAME=${POOL_NAME:-test-pool}
RELAY_PORT=${RELAY_PORT:-4001}
CONTROL_PLANE_PORT=${CONTROL_PLANE_PORT:-8080}
export MESH_DATA_DIR=${MESH_DATA_DIR:-$HOME/.meshnet}
# What device1.sh writes and device2.sh reads: the pool id, root key, name and a join token.
POOL_INFO=${POOL_INFO:-$here/.pool-info}
# LOCAL_ONLY=1 keeps every packet on this machine (both devices on one computer, for a try-out).
network_flags=()
if [ "${LOCAL_ONLY:-0}" = 1 ]; then network_flags+=(--local-only); fi
if [ -n "${BEACON_PORT:-}" ]; then network_flags+=(--beacon-port "$BEACON_PORT"); fi
model_flags=()
if [ -n "${MODEL:-}" ]; then model_flags+=(--model "$MODEL"); fi

t0=$(date +%s)
step() { echo "T+$(($(date +%s) - t0))s: $*"; }
