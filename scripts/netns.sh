#!/usr/bin/env bash
# Run a command inside a private network namespace where every address is loopback-range.
#
# Why: libwebrtc (inside livekit.rtc and Chromium) ignores loopback interfaces when gathering ICE candidates,
# so a local call needs a second interface. In this namespace that interface (veth "v0") carries 127.0.1.1,
# so every media packet of a test call goes between 127.0.0.0/8 addresses and nothing can leave the machine.
#
# Used as root with iproute2; anywhere else (or with LK_BRIDGE_NETNS=0) the command runs as it is, and
# clients use the machine's own interfaces as with any local livekit-server — with a warning on stderr. In CI
# (CI=true), where the tests must run the way they were designed, a namespace that cannot be set up is an
# error (exit 3) unless LK_BRIDGE_NETNS=0 says so explicitly.
set -euo pipefail
NS=${LK_BRIDGE_NETNS_NAME:-lkbridge}

can_netns() {
  [ "${LK_BRIDGE_NETNS:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1
}

# Each step returns on failure: `set -e` does not apply inside a function whose status is tested.
ensure_ns() {
  if ! ip netns list 2>/dev/null | grep -qw "$NS"; then
    ip netns add "$NS" || return
  fi
  ip -n "$NS" link set lo up || return
  if ! ip -n "$NS" link show v0 >/dev/null 2>&1; then
    ip -n "$NS" link add v0 type veth peer name v1 || return
  fi
  ip -n "$NS" addr replace 127.0.1.1/32 dev v0 || return
  ip -n "$NS" link set v0 up || return
  ip -n "$NS" link set v1 up
}

case "${1:-}" in
  exec)
    shift
    why=""
    if [ "${LK_BRIDGE_NETNS:-1}" = 0 ]; then
      exec "$@"  # asked for explicitly: no namespace, no warning
    elif ! can_netns; then
      why="not root, or iproute2 ('ip') is missing"
    elif ! err=$(ensure_ns 2>&1); then
      why="setting up network namespace '$NS' failed: ${err:-no message}"
    else
      exec ip netns exec "$NS" "$@"
    fi
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
      echo "netns.sh: $why; refusing to run in the host namespace in CI (set LK_BRIDGE_NETNS=0 to allow it)" >&2
      exit 3
    fi
    echo "netns.sh: warning: $why; running in the host network namespace" >&2
    exec "$@"
    ;;
  name) echo "$NS" ;;
  delete) ip netns del "$NS" 2>/dev/null || true ;;
  *) echo "usage: $0 exec COMMAND... | name | delete" >&2; exit 2 ;;
esac
