#!/usr/bin/env bash
# First-time set-up: installs dependencies (Debian 12), builds 1bit, and runs it on a model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset default
cmake --build --preset default
./build/default/1bit --version
