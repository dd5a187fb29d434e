#!/usr/bin/env bash
# Installs what the interop suite needs (Python's grpcio with its xDS
# client, pytest). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt
