#!/usr/bin/env bash
# First-time set-up: installs dependencies (Debian 12), builds 1bit, and runs it on a model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset default
cmake --build --preset default
# Until the default model ships in models/, show what 1bit reads on a synthesized model.
./build/default/1bit synth --preset tiny --seed 1 -o build/tiny.h1b
./build/default/1bit info build/tiny.h1b
