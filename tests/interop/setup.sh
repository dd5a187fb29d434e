#!/usr/bin/env bash
# Installs what the interop suite needs: Python's grpcio with its xDS
# client, kazoo and pytest (requirements.txt), Node's @grpc/grpc-js with
# @grpc/grpc-js-xds (package.json, pinned by package-lock.json), and the
# real registries the source tests import from: Debian's zookeeper (with a
# Java runtime) and etcd-server, with etcdctl from etcd-client, and rnacos
# (a Nacos 2.x-compatible server, `cargo install`, several minutes the first
# time) with nacos-sdk-python (requirements.txt).
# Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tests/interop/setup.sh: node and npm are required for the Node gRPC xDS" \
         "interop tests (install Node.js >= 20 with npm)" >&2
    exit 1
fi

missing=()
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/interop/setup.sh: installing ${missing[*]} (apt-get)" >&2
    sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! command -v rnacos >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/rnacos" ]; then
    echo "tests/interop/setup.sh: installing rnacos (cargo install)" >&2
    cargo install --quiet rnacos --version 0.8.8 --locked
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
