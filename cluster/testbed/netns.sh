#!/usr/bin/env bash
# A multi-host test bed on one Linux machine: each "host" is a network namespace (with its own
# hostname, via a UTS namespace at exec time) joined to the others by a veth pair and a bridge,
# so MPI ranks on different hosts really talk TCP. Needs root and iproute2.
#
#   netns.sh up N            make hosts kvs1..kvsN at 10.213.0.1..N/24 (bridge kvsbr0, the
#                            root namespace is 10.213.0.254)
#   netns.sh down            remove everything `up` made (idempotent)
#   netns.sh exec HOST CMD   run CMD inside HOST (a name kvsI or its address)
#   netns.sh rsh HOST CMD    the same, as Open MPI's plm_rsh_agent (sh -c "CMD")
#   netns.sh netem HOST ARGS tc netem on HOST's link, e.g. "delay 100ms loss 5%"; "off" clears
#                            (without sch_netem in the kernel: the same through build/netdelay)
#   netns.sh link HOST up|down   take HOST's link down (a failed node) or back up
#   netns.sh hostfile N SLOTS    print an MPI hostfile for kvs1..kvsN
#
# KVSHARD_NETNS_PREFIX (default kvs) and KVSHARD_NETNS_SUBNET (default 10.213.0) rename
# everything, so two test beds can coexist.
set -euo pipefail
PREFIX=${KVSHARD_NETNS_PREFIX:-kvs}
SUBNET=${KVSHARD_NETNS_SUBNET:-10.213.0}
BRIDGE=${PREFIX}br0

host_name() {  # kvs2 | 10.213.0.2 | 2 -> kvs2
  local h=$1
  case "$h" in
    "$SUBNET".*) echo "${PREFIX}${h##*.}" ;;
    "$PREFIX"*) echo "$h" ;;
    [0-9]*) echo "${PREFIX}${h}" ;;
    *) echo "netns.sh: unknown host '$h'" >&2; exit 2 ;;
  esac
}

cmd_up() {
  local n=$1
  cmd_down >/dev/null 2>&1 || true
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$n"); do
    local ns=${PREFIX}${i}
    ip netns add "$ns"
    ip link add "${ns}h" type veth peer name "${ns}n"
    ip link set "${ns}h" master "$BRIDGE"
    ip link set "${ns}h" up
    ip link set "${ns}n" netns "$ns"
    ip -n "$ns" link set "${ns}n" name eth0
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
  # Bridged traffic must not be filtered by the host's firewall rules, if any are loaded.
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables || true
  fi
}

cmd_down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+$" || true); do
    netdelay_off "$ns"
    # Anything still running in the namespace goes with it.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" || true
  done
  for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${PREFIX}[0-9]+h$" || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

cmd_exec() {
  local ns
  ns=$(host_name "$1")
  shift
  exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$0"; exec "$@"' "$ns" "$@"
}

cmd_rsh() {
  # Open MPI calls the agent as: AGENT [options] HOST CMD...; options it may add are skipped.
  while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
  local ns
  ns=$(host_name "$1")
  shift
  exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns; $*"
}

# Kernels without sch_netem (some VMs) get the same "delay D loss P" from netdelay, a user-space
# NFQUEUE program (cluster/testbed/netdelay.c, built as build/netdelay).
NETDELAY=${KVSHARD_NETDELAY:-$(cd "$(dirname "$0")/../.." && pwd)/build/netdelay}
RUN_DIR=${KVSHARD_NETNS_RUN:-/run/kvshard-netns}

netdelay_off() {
  local ns=$1 pidf="$RUN_DIR/$1.netdelay.pid"
  ip netns exec "$ns" iptables -D OUTPUT -o eth0 -j NFQUEUE --queue-num 7 --queue-bypass \
    2>/dev/null || true
  if [ -s "$pidf" ]; then kill "$(cat "$pidf")" 2>/dev/null || true; rm -f "$pidf"; fi
}

cmd_netem() {
  local ns
  ns=$(host_name "$1")
  shift
  if [ "$*" = "off" ]; then
    ip -n "$ns" link show eth0 >/dev/null
    tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
    netdelay_off "$ns"
    return
  fi
  # shellcheck disable=SC2068
  if tc -n "$ns" qdisc replace dev eth0 root netem $@ 2>/dev/null; then return; fi
  local delay_ms=0 loss=0
  while [ $# -gt 0 ]; do
    case "$1" in
      delay) delay_ms=${2%ms}; shift 2 ;;
      loss) loss=$(awk -v p="${2%\%}" 'BEGIN { printf "%.4f", p / 100 }'); shift 2 ;;
      *) echo "netns.sh: netem fallback understands 'delay Nms' and 'loss P%', not '$1'" >&2; exit 2 ;;
    esac
  done
  [ -x "$NETDELAY" ] || { echo "netns.sh: no sch_netem in this kernel and no $NETDELAY" >&2; exit 2; }
  netdelay_off "$ns"
  mkdir -p "$RUN_DIR"
  ip netns exec "$ns" "$NETDELAY" --queue 7 --delay-ms "$delay_ms" --loss "$loss" \
    >/dev/null 2>&1 &
  echo $! > "$RUN_DIR/$ns.netdelay.pid"
  sleep 0.2
  ip netns exec "$ns" iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 7 --queue-bypass
}

cmd_link() {
  local ns
  ns=$(host_name "$1")
  ip link set "${ns}h" "$2"
}

cmd_hostfile() {
  for i in $(seq 1 "$1"); do echo "$SUBNET.$i slots=$2"; done
}

case "${1:-}" in
  up) cmd_up "$2" ;;
  down) cmd_down ;;
  exec) shift; cmd_exec "$@" ;;
  rsh) shift; cmd_rsh "$@" ;;
  netem) shift; cmd_netem "$@" ;;
  link) cmd_link "$2" "$3" ;;
  hostfile) cmd_hostfile "$2" "$3" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
