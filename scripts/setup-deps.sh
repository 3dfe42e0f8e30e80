#!/usr/bin/env bash
# Installs the Debian 12 packages kvshard needs to build, test and run. Idempotent.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config git python3 python3-pip
  libopenmpi-dev openmpi-bin
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libsentencepiece-dev libpcre2-dev
  libgtest-dev libgmock-dev clang-format
  libthrift-dev libboost-dev libboost-context-dev thrift-compiler python3-thrift libcpp-httplib-dev
  iproute2 procps iptables libnetfilter-queue-dev
  ansible ansible-lint openssh-server openssh-client python3-apt libopenblas0
  libopenblas0-openmp
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
