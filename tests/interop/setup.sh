#!/usr/bin/env bash
# Installs what the interop suite needs: Python's grpcio with its xDS
# client and pytest (requirements.txt), and Node's @grpc/grpc-js with
# @grpc/grpc-js-xds (package.json, pinned by package-lock.json).
# Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tests/interop/setup.sh: node and npm are required for the Node gRPC xDS" \
         "interop tests (install Node.js >= 20 with npm)" >&2
    exit 1
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
