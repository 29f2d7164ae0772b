# Sourced by the bench/cuda/*_on_device.sh scripts on the GPU machine: BIN = the packed binaries
# ($DEVBIN, default .devbin, from bench/cuda/pack_devbin.sh), OUT = the log folder (the device tool
# brings $OUT back), the packed shared libraries on the library path, and a link that makes the
# source folder the test binaries were built in ($SRC_DIR, default /work/main) exist there (they
# read test data under it). Also the card's name into $OUT/gpu.txt, and `step CMD...`, which runs
# a command and sets status=1 if it fails.
BIN="$PWD/${DEVBIN:-.devbin}"
OUT="${OUT:-/tmp/onebit-out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"
SRC="${SRC_DIR:-/work/main}"
if [ "$PWD" != "$SRC" ]; then mkdir -p "$(dirname "$SRC")" && ln -sfn "$PWD" "$SRC"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
step() { echo "== $*"; "$@" || { echo "FAILED ($?): $*"; status=1; }; }
