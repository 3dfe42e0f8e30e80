#!/usr/bin/env bash
# The Ansible playbooks, for real, against two hosts: network namespaces kva1 (head) and kva2
# (shard) from cluster/testbed/netns.sh, each running its own sshd, so Ansible and mpirun both
# reach the hosts over real SSH. Checks: syntax and ansible-lint; site.yml provisions, deploys,
# starts (through kvshard-launch) and verifies a 2-host cluster that generates "Once upon a
# time..."; a second site.yml and start.yml change nothing; deploy.yml repairs a damaged model
# file; start.yml restarts a cluster whose files changed; a killed rank 0 is restarted; a shard
# host cut off ends in restarts (kvshard-launch ends the hung mpirun, its checks fail while the
# host is away) until it is back; a GPU host without nvidia-smi fails with a clear message;
# stop.yml stops everything; a cluster that cannot start makes start.yml fail showing the log
# (kvshard-launch's check naming the host), and stop.yml ends its retries.
#
# Each host gets a private directory bind-mounted at one path ($T/node) inside its namespace:
# every host has the same kvshard_prefix, as on a real cluster, yet its own files.
#
# Needs root (namespaces, mounts, sshd); exits 77 (skip) otherwise. Uses KVSHARD_NETNS_PREFIX=kva
# and 10.214.0.0/24, apart from the multi-node tests' kvs / 10.213.0.0/24.
# KVSHARD_TEST_LOG_DIR=DIR keeps the playbooks' logs there.
set -euo pipefail
REPO=${KVSHARD_REPO_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${KVSHARD_BIN:-$REPO/build/kvshard}
export KVSHARD_NETNS_PREFIX=kva KVSHARD_NETNS_SUBNET=10.214.0
NETNS=$REPO/cluster/testbed/netns.sh
HOSTS=(kva1 kva2)
PORT=9090

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: needs root (network namespaces, bind mounts, sshd)"
  exit 77
fi

step() { printf '\n=== [%3ss] %s\n' "$SECONDS" "$*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

T=$(mktemp -d /tmp/kva-ansible.XXXXXX)
SSHD_PIDS=()
teardown() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ -s "$T/hosts/kva1/kvshard/log/kvshard.log" ]; then
    echo "--- the head's kvshard.log (last 30 lines)"
    tail -n 30 "$T/hosts/kva1/kvshard/log/kvshard.log"
  fi
  # Kills everything left in the namespaces (sshd, supervisor, mpirun, ranks), then removes them.
  bash "$NETNS" down >/dev/null 2>&1
  for pid in "${SSHD_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  # Ansible's ssh control masters (their sockets are under $T/cp).
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$T/cp/"; then kill "${p#/proc/}" 2>/dev/null; fi
  done
  if [ -n "${KVSHARD_TEST_LOG_DIR:-}" ]; then mkdir -p "$KVSHARD_TEST_LOG_DIR" && cp -r "$T/logs/." "$KVSHARD_TEST_LOG_DIR/"; fi
  rm -rf "$T"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

step "packages"
# The roles install what is missing with apt, but a namespace has no route to a mirror: install
# the roles' runtime list here (a no-op on a provisioned machine), with the test's own tools.
mapfile -t RUNTIME_PKGS < <(python3 -c 'import sys, yaml
print("\n".join(yaml.safe_load(open(sys.argv[1]))["kvshard_runtime_packages"]))' \
  "$REPO/ansible/roles/system_packages/defaults/main.yml")
PKGS=(ansible ansible-lint openssh-server openssh-client python3-apt python3-yaml iproute2 "${RUNTIME_PKGS[@]}")
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 300 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$BIN" ] || fail "no kvshard binary at $BIN (build first)"
# Deploy from a copy: a rebuild during the test must not change the binary under it.
cp "$BIN" "$T/kvshard"

step "two hosts, each with its own sshd"
mkdir -p "$T/ssh" "$T/node" "$T/logs" "$T/cp" /run/sshd
ssh-keygen -q -t ed25519 -N '' -C kva-ansible-test -f "$T/ssh/ansible_key"
cp "$T/ssh/ansible_key.pub" "$T/ssh/ansible_authorized_keys"
bash "$NETNS" up ${#HOSTS[@]}
for i in "${!HOSTS[@]}"; do
  h=${HOSTS[$i]}
  d=$T/hosts/$h
  mkdir -p "$d/sshd"
  ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$d/sshd/ssh_host_ed25519_key"
  # Root by key only; the cluster key that the role authorizes lives in the host's own files.
  cat >"$d/sshd/sshd_config" <<EOF
ListenAddress $KVSHARD_NETNS_SUBNET.$((i + 1)):22
HostKey $T/node/sshd/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile $T/ssh/ansible_authorized_keys $T/node/root-ssh/authorized_keys
# The key files are under /tmp, which is world-writable.
StrictModes no
Subsystem sftp internal-sftp
EOF
  # Inside the namespace (its own mount namespace too): the host's directory at $T/node, then
  # sshd in the foreground, so everything started over ssh sees that host's files.
  bash "$NETNS" exec "$h" /bin/sh -c 'mount --bind "$1" "$2" && exec /usr/sbin/sshd -D -e -f "$3"' \
    sh "$d" "$T/node" "$d/sshd/sshd_config" >"$d/sshd/sshd.log" 2>&1 &
  SSHD_PIDS+=($!)
  disown  # killed at teardown; no job notices from bash
done
SSH=(ssh -i "$T/ssh/ansible_key" -o IdentitiesOnly=yes -o UserKnownHostsFile="$T/ssh/known_hosts"
  -o StrictHostKeyChecking=no -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=error)
for i in "${!HOSTS[@]}"; do
  for try in $(seq 50); do
    if out=$(timeout 10 "${SSH[@]}" "root@$KVSHARD_NETNS_SUBNET.$((i + 1))" hostname 2>/dev/null); then break; fi
    [ "$try" -lt 50 ] || fail "no ssh to ${HOSTS[$i]}: $(cat "$T/hosts/${HOSTS[$i]}/sshd/sshd.log")"
    sleep 0.2
  done
  [ "$out" = "${HOSTS[$i]}" ] || fail "ssh to ${HOSTS[$i]} reached '$out'"
done
echo "ssh ok: ${HOSTS[*]}"

cat >"$T/inventory.yml" <<EOF
kvshard_cluster:
  children:
    kvshard_head:
      hosts:
        kva1: {ansible_host: $KVSHARD_NETNS_SUBNET.1}
    kvshard_shards:
      hosts:
        kva2: {ansible_host: $KVSHARD_NETNS_SUBNET.2}
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: $T/ssh/ansible_key
    ansible_ssh_common_args: >-
      -o IdentitiesOnly=yes -o UserKnownHostsFile=$T/ssh/known_hosts -o StrictHostKeyChecking=no
    ansible_remote_tmp: $T/node/ansible-tmp
    gpus: 0
    kvshard_user: root
    kvshard_user_create: false
    kvshard_prefix: $T/node/kvshard
    kvshard_ssh_authorized_keys_file: $T/node/root-ssh/authorized_keys
    kvshard_ssh_host_key_file: $T/node/sshd/ssh_host_ed25519_key.pub
    kvshard_source_dir: $REPO
    kvshard_local_binary: $T/kvshard
    kvshard_model_src: $REPO/models/stories260K
    kvshard_controller_cache_dir: $T/controller-cache
    kvshard_port: $PORT
    kvshard_restart_sec: 1
    kvshard_mpi_network: $KVSHARD_NETNS_SUBNET.0/24
    kvshard_shared_cores: true
    kvshard_serve_extra_args: [--threads, "1"]
EOF

export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg ANSIBLE_HOME=$T/ansible-home
# Nothing of Ansible's under ~ (remote temp: the controller's own, for tasks run on localhost).
export ANSIBLE_LOCAL_TEMP=$T/ansible-local ANSIBLE_REMOTE_TEMP=$T/ansible-remote-tmp
export ANSIBLE_SSH_CONTROL_PATH_DIR=$T/cp
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 XDG_CACHE_HOME=$T/cache
# play NAME PLAYBOOK [ARGS]: runs ansible/PLAYBOOK with the test inventory, its output in
# $T/logs/NAME.log; prints the recap.
play() {
  local name=$1 playbook=$2 rc=0
  shift 2
  timeout 240 ansible-playbook -i "$T/inventory.yml" "$REPO/ansible/$playbook" "$@" >"$T/logs/$name.log" 2>&1 || rc=$?
  sed -n '/PLAY RECAP/,$p' "$T/logs/$name.log"
  return "$rc"
}
show_log() { tail -n 60 "$T/logs/$1.log"; }
# changed=N of HOST in a log's recap.
changed_of() { sed -n "/PLAY RECAP/,\$s/^$2 .*changed=\([0-9]*\).*/\1/p" "$T/logs/$1.log"; }
client() { timeout 30 "$T/kvshard" client --host "$KVSHARD_NETNS_SUBNET.1" --port "$PORT" "$@"; }
head_file() { echo "$T/hosts/kva1/kvshard/$1"; }
HEAD_LOG=$T/hosts/kva1/kvshard/log/kvshard.log
# wait_log SECONDS FROM_LINE PATTERN: waits until the head's kvshard.log has a line matching
# PATTERN (grep -E) after line FROM_LINE.
wait_log() {
  local i
  for ((i = 0; i < $1 * 2; i++)); do
    tail -n +"$(($2 + 1))" "$HEAD_LOG" 2>/dev/null | grep -qE -- "$3" && return 0
    sleep 0.5
  done
  return 1
}

step "syntax check"
for p in site deploy start stop; do
  ansible-playbook -i "$T/inventory.yml" --syntax-check "$REPO/ansible/$p.yml" >/dev/null ||
    fail "$p.yml: syntax"
done
echo "syntax ok: site deploy start stop"

step "ansible-lint"
(cd "$REPO/ansible" && timeout 300 ansible-lint --nocolor) || fail "ansible-lint"

step "site.yml: provision, deploy, start, verify"
play site1 site.yml || { show_log site1; fail "site.yml"; }
grep -q '"msg": "Once upon a time' "$T/logs/site1.log" || { show_log site1; fail "no verified generation"; }
[ "$(client health)" = serving ] || fail "health after site.yml"
text=$(client generate --prompt "Once upon a time" --max-tokens 8 --temperature 0 2>/dev/null)
echo "generated: $text"
[[ "$text" == "Once upon a time"* ]] || fail "generation: '$text'"
client status | python3 -c 'import json, sys
s = json.load(sys.stdin)
hosts = sorted({r["host"] for r in s["ranks"]})
assert s["world_size"] == 2 and hosts == ["kva1", "kva2"], (s["world_size"], hosts)
print("status ok: world_size", s["world_size"], "hosts", hosts)'
# mpirun reached the shard over real ssh with the cluster key, from the head's address.
grep -q "Accepted publickey for root from $KVSHARD_NETNS_SUBNET.1 " "$T/hosts/kva2/sshd/sshd.log" ||
  fail "no ssh login from the head on kva2"
# The model arrived intact on the shard's own disk.
(cd "$REPO/models/stories260K" && find . -type f -exec sha256sum {} + | sort -k2) >"$T/model.sums"
(cd "$T/hosts/kva2/kvshard/models/stories260K" && find . -type f -exec sha256sum {} + | sort -k2) |
  diff "$T/model.sums" - || fail "the model on kva2 differs"
# No systemd here: the supervisor script runs it, and the unit was rendered for reference.
[ -x "$(head_file bin/kvshard-service)" ] || fail "no supervisor script"
grep -q '^Restart=on-failure' "$(head_file etc/kvshard.service)" || fail "no unit"
grep -qE "^ExecStart=$T/node/kvshard/bin/kvshard-launch --hostfile .* --rsh 'ssh -F $T/node/kvshard/ssh/config' --kvshard $T/node/kvshard/bin/kvshard .*--shared-cores -- .*--pid-file" \
  "$(head_file etc/kvshard.service)" || fail "unit's ExecStart: $(grep ^ExecStart "$(head_file etc/kvshard.service)")"
grep -q "^exec $T/node/kvshard/bin/kvshard-launch " "$(head_file bin/kvshard-cluster)" || fail "the launch script"
# kvshard-launch beside the binary on every node; on the head it checked both hosts, printed the
# map and ran mpirun with the ssh config as its agent.
for h in "${HOSTS[@]}"; do
  cmp "$REPO/cluster/kvshard-launch" "$T/hosts/$h/kvshard/bin/kvshard-launch" || fail "no kvshard-launch on $h"
done
grep -q "kvshard-launch: 2 ranks on 2 hosts; every host has version" "$HEAD_LOG" || fail "no launcher checks in the log"
grep -q "rank 1 -> $KVSHARD_NETNS_SUBNET.2 -> cpu" "$HEAD_LOG" || fail "no rank map in the log"
grep -q "kvshard-launch: mpirun .*--mca plm_rsh_agent ssh -F $T/node/kvshard/ssh/config" "$HEAD_LOG" ||
  fail "mpirun did not get the ssh config as its agent"
echo "launcher ok: $(grep -m1 'kvshard-launch: 2 ranks' "$HEAD_LOG")"
if command -v systemd-analyze >/dev/null; then
  # On the head, where the unit's paths exist.
  timeout 30 "${SSH[@]}" "root@$KVSHARD_NETNS_SUBNET.1" systemd-analyze verify "$T/node/kvshard/etc/kvshard.service" ||
    fail "systemd-analyze verify"
  echo "unit ok: systemd-analyze verify"
fi

step "site.yml again: nothing changes"
play site2 site.yml || { show_log site2; fail "second site.yml"; }
for h in "${HOSTS[@]}"; do
  [ "$(changed_of site2 "$h")" = 0 ] || { show_log site2; fail "second site.yml changed $h"; }
done

step "start.yml: already serving, nothing changes"
play start1 start.yml || { show_log start1; fail "start.yml"; }
[ "$(changed_of start1 kva1)" = 0 ] || { show_log start1; fail "start.yml changed kva1"; }

step "deploy.yml repairs a damaged model file and removes a stray one"
shard_model=$T/hosts/kva2/kvshard/models/stories260K
echo damage >>"$shard_model/tokenizer.bin"
echo stray >"$shard_model/stray.json"
play deploy1 deploy.yml || { show_log deploy1; fail "deploy.yml"; }
[ "$(changed_of deploy1 kva1)" = 0 ] || { show_log deploy1; fail "deploy.yml changed the intact kva1"; }
[ "$(changed_of deploy1 kva2)" -gt 0 ] || { show_log deploy1; fail "deploy.yml did not repair kva2"; }
(cd "$shard_model" && find . -type f -exec sha256sum {} + | sort -k2) | diff "$T/model.sums" - ||
  fail "the model on kva2 is still not the controller's"
echo "kva2's model is the controller's again"

step "start.yml restarts a cluster whose command line changed"
before=$(cat "$(head_file run/kvshard.pid)")
echo "# edited" >>"$(head_file bin/kvshard-cluster)"
play restart start.yml || { show_log restart; fail "start.yml after an edit"; }
[ "$(changed_of restart kva1)" -gt 0 ] || { show_log restart; fail "start.yml did not restart"; }
after=$(cat "$(head_file run/kvshard.pid)")
[ "$after" != "$before" ] || fail "rank 0 is still $before"
echo "restarted: rank 0 $before -> $after"

step "a killed rank 0 is restarted (Restart=on-failure)"
old=$(cat "$(head_file run/kvshard.pid)")
kill -KILL "$old"
for try in $(seq 120); do
  new=$(cat "$(head_file run/kvshard.pid)" 2>/dev/null || true)
  if [ -n "$new" ] && [ "$new" != "$old" ] && [ "$(client health 2>/dev/null)" = serving ]; then break; fi
  [ "$try" -lt 120 ] || fail "not restarted after rank 0 was killed"
  sleep 0.5
done
echo "rank 0 $old killed, now $new and serving"

step "a shard host cut off: the job ends in restarts (not a hung mpirun) until it is back"
old=$(cat "$(head_file run/kvshard.pid)")
from=$(wc -l <"$HEAD_LOG")
bash "$NETNS" link kva2 down
t0=$SECONDS
# Rank 0 notices the silent shard (heartbeats) and exits; mpirun, which cannot reach kva2, is
# ended by kvshard-launch, and the supervisor restarts the job.
wait_log 90 "$from" "kvshard-service: the cluster failed \(exit status" ||
  fail "the job did not end within 90 s of kva2's link going down"
echo "the job ended after $((SECONDS - t0)) s; $(tail -n +"$((from + 1))" "$HEAD_LOG" | grep -m1 -o 'kvshard-launch: rank 0 exited .*' ||
  echo 'mpirun ended by itself')"
# Each restart's checks fail on kva2 while it is away.
wait_log 60 "$from" "kvshard-launch: host $KVSHARD_NETNS_SUBNET.2: cannot run the check" ||
  fail "no failed check of kva2 after the restart"
echo "restart checks fail on kva2 while it is away"
bash "$NETNS" link kva2 up
t0=$SECONDS
for try in $(seq 180); do
  new=$(cat "$(head_file run/kvshard.pid)" 2>/dev/null || true)
  if [ -n "$new" ] && [ "$new" != "$old" ] && [ "$(client health 2>/dev/null)" = serving ]; then break; fi
  [ "$try" -lt 180 ] || fail "not serving again within 90 s of kva2's link coming back"
  sleep 0.5
done
client status | python3 -c 'import json, sys
s = json.load(sys.stdin)
assert s["world_size"] == 2 and sorted({r["host"] for r in s["ranks"]}) == ["kva1", "kva2"], s'
echo "serving on both hosts again $((SECONDS - t0)) s after kva2 came back (rank 0 $old -> $new)"

step "a GPU host without the NVIDIA driver fails clearly"
if command -v nvidia-smi >/dev/null; then
  echo "nvidia-smi is installed here: nothing to check"
else
  if play gpu site.yml --limit kva2 -e gpus=2 --start-at-task "Run nvidia-smi (the NVIDIA driver)"; then
    fail "site.yml passed on a GPU host without nvidia-smi"
  fi
  grep -q "nvidia-smi is not installed: install the NVIDIA driver" "$T/logs/gpu.log" ||
    { show_log gpu; fail "no clear message about nvidia-smi"; }
  echo "failed as it should: $(grep -o 'kva2 has gpus: 2 but nvidia-smi is not installed' "$T/logs/gpu.log" | head -1)"
fi

# No server, supervisor, mpirun or orted left on any host, and nothing answers.
assert_stopped() {
  client health >/dev/null 2>&1 && fail "still serving after $1"
  for h in "${HOSTS[@]}"; do
    for pid in $(ip netns pids "$h"); do
      case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        kvshard | kvshard-launch | mpirun | orted | kvshard-service) fail "after $1, still running on $h: $(tr '\0' ' ' <"/proc/$pid/cmdline")" ;;
      esac
    done
  done
  echo "nothing left running after $1"
}

step "stop.yml"
play stop1 stop.yml || { show_log stop1; fail "stop.yml"; }
[ "$(changed_of stop1 kva1)" -gt 0 ] || fail "stop.yml changed nothing"
assert_stopped stop.yml
play stop2 stop.yml || { show_log stop2; fail "second stop.yml"; }
for h in "${HOSTS[@]}"; do
  [ "$(changed_of stop2 "$h")" = 0 ] || { show_log stop2; fail "second stop.yml changed $h"; }
done

step "a cluster that cannot start: start.yml fails with its log; stop.yml ends the retries"
mv "$(head_file models/stories260K/config.json)" "$T/config.json.away"
if play broken start.yml -e kvshard_start_timeout_s=6; then fail "start.yml passed without a model"; fi
if ! grep -q "the cluster did not serve on" "$T/logs/broken.log" ||
  ! grep -q "kvshard-service: the cluster failed (exit status" "$T/logs/broken.log" ||
  ! grep -q "kvshard-launch: host $KVSHARD_NETNS_SUBNET.2 differs from this host" "$T/logs/broken.log"; then
  show_log broken
  fail "start.yml's failure does not show the retries in the log"
fi
mv "$T/config.json.away" "$(head_file models/stories260K/config.json)"
play stop3 stop.yml || { show_log stop3; fail "stop.yml of a retrying cluster"; }
assert_stopped "stop.yml of a retrying cluster"

step "PASS in ${SECONDS}s"
