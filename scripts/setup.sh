#!/usr/bin/env bash
# First-time set-up: installs dependencies (Debian 12), builds 1bit, and runs the default model
# that ships in models/ on a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset default
cmake --build --preset default
./build/default/1bit run -p "The old man looked at the sea and" -n 64 --seed 1 --verbose
