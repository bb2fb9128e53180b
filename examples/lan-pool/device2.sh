#!/usr/bin/env bash
# Device 2 (a member): creates this device's identity, asks Device 1's agent for a certificate over
# LAN beacons (with the join token from .pool-info, or the values typed in), and runs the agent.
#
#   DEVICE_NAME="Member" MODEL=model.gguf ./device2.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
DEVICE_NAME=${DEVICE_NAME:-$(hostname)-member}

if [ -f "$POOL_INFO" ]; then
  read_field() { node -e "process.stdout.write(JSON.parse(require('fs').readFileSync('$POOL_INFO', 'utf8')).$1 ?? '')"; }
  POOL_ID=$(read_field poolId); ROOT_KEY=$(read_field rootPublicKey); TOKEN=$(read_field joinToken)
else
  read -r -p "Pool ID: " POOL_ID
  read -r -p "Pool Root Public Key: " ROOT_KEY
  read -r -p "Join token (empty: Device 1 approves with mesh pool-approve): " TOKEN
fi

$MESH init --network-id "$NETWORK_ID" --name "$DEVICE_NAME"
step "asking the pool's admin for a certificate over LAN beacons (up to 60 s)"
join_flags=(--pool-id "$POOL_ID" --pool-root-pubkey "$ROOT_KEY" --name "$POOL_NAME" --timeout 60)
if [ -n "${TOKEN:-}" ]; then join_flags+=(--token "$TOKEN"); fi
$MESH pool-join "${join_flags[@]}" "${network_flags[@]}"
step "joined; starting the agent (Ctrl+C stops it)"
exec $MESH start "${network_flags[@]}" "${model_flags[@]}"
