#!/usr/bin/env bash
# Installs the peer tools the benchmarks compare against (not needed by
# `cargo test` or CI): rnacos, a Nacos-compatible server, from crates.io;
# etcd (server and etcdctl) from Debian for benches/cluster-bench.sh, and
# protoc, which the etcd-client crate's build script and that script need;
# nginx (Debian) and oha (crates.io) for benches/proxy-bench.sh.
set -euo pipefail
if ! command -v rnacos >/dev/null 2>&1; then
  echo "installing rnacos (cargo install; takes several minutes on 2 cores)" >&2
  cargo install rnacos --version 0.8.8 --locked
fi
rnacos --version
if ! command -v oha >/dev/null 2>&1; then
  echo "installing oha (cargo install)" >&2
  cargo install oha --version 1.16.0 --locked
fi
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt-get)" >&2
  sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
etcd --version | sed -n 1p
