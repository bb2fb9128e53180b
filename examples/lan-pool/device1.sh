#!/usr/bin/env bash
# Device 1 (the pool's admin): starts mesh-relay and mesh-control-plane in the background, creates
# this device's identity and a pool, writes .pool-info for Device 2, and runs the agent until Ctrl+C.
#
#   NETWORK_ID=my-network DEVICE_NAME="Admin" POOL_NAME=my-pool RELAY_PORT=4002 \
#     CONTROL_PLANE_PORT=8081 MODEL=model.gguf ./device1.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
DEVICE_NAME=${DEVICE_NAME:-$(hostname)-admin}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

mkdir -p "$MESH_DATA_DIR"
step "starting mesh-relay on port $RELAY_PORT"
relay_flags=(--port "$RELAY_PORT" --data-dir "$MESH_DATA_DIR/relay")
if [ "${LOCAL_ONLY:-0}" = 1 ]; then relay_flags+=(--local-only); fi
$MESH_RELAY "${relay_flags[@]}" >"$MESH_DATA_DIR/relay.out" 2>&1 &
pids+=($!)

step "starting mesh-control-plane from port $CONTROL_PLANE_PORT"
$MESH_CONTROL_PLANE --port "$CONTROL_PLANE_PORT" --json >"$MESH_DATA_DIR/control-plane.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '"url"' "$MESH_DATA_DIR/control-plane.out" 2>/dev/null && break; sleep 0.1; done
control_plane=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$MESH_DATA_DIR/control-plane.out" | head -1)
[ -n "$control_plane" ] || { echo "mesh-control-plane did not start:"; cat "$MESH_DATA_DIR/control-plane.out"; exit 1; }
step "control plane at $control_plane"

$MESH init --network-id "$NETWORK_ID" --name "$DEVICE_NAME"
pool=$($MESH pool-create --name "$POOL_NAME" --json)
echo "$pool" >"$POOL_INFO"
step "pool created; give Device 2 the file $POOL_INFO, or these:"
echo "$pool" | node -e 'const p = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(`  Pool ID:              ${p.poolId}\n  Pool Root Public Key: ${p.rootPublicKey}\n  Join token:           ${p.joinToken}`)'

step "starting the agent (Ctrl+C stops it, the control plane and the relay)"
$MESH start --control-plane "$control_plane" "${network_flags[@]}" "${model_flags[@]}" &
pids+=($!)
wait "${pids[-1]}"
