#!/usr/bin/env bash
# Run a command inside a private network namespace where every address is loopback-range.
#
# Why: libwebrtc (inside livekit.rtc and Chromium) ignores loopback interfaces when gathering ICE candidates,
# so a local call needs a second interface. In this namespace that interface (veth "v0") carries 127.0.1.1,
# so every media packet of a test call goes between 127.0.0.0/8 addresses and nothing can leave the machine.
#
# Used as root with iproute2; anywhere else (or with LK_BRIDGE_NETNS=0) the command runs as it is, and
# clients use the machine's own interfaces as with any local livekit-server.
set -euo pipefail
NS=${LK_BRIDGE_NETNS_NAME:-lkbridge}

can_netns() {
  [ "${LK_BRIDGE_NETNS:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1
}

ensure_ns() {
  if ! ip netns list 2>/dev/null | grep -qw "$NS"; then
    ip netns add "$NS"
  fi
  ip -n "$NS" link set lo up
  if ! ip -n "$NS" link show v0 >/dev/null 2>&1; then
    ip -n "$NS" link add v0 type veth peer name v1
  fi
  ip -n "$NS" addr replace 127.0.1.1/32 dev v0
  ip -n "$NS" link set v0 up
  ip -n "$NS" link set v1 up
}

case "${1:-}" in
  exec)
    shift
    if can_netns && ensure_ns 2>/dev/null; then
      exec ip netns exec "$NS" "$@"
    fi
    exec "$@"
    ;;
  name) echo "$NS" ;;
  delete) ip netns del "$NS" 2>/dev/null || true ;;
  *) echo "usage: $0 exec COMMAND... | name | delete" >&2; exit 2 ;;
esac
