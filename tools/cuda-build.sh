#!/usr/bin/env bash
# `cargo build --release --features cuda` on a machine with no GPU and no CUDA install:
#   tools/cuda-build.sh                     # target/cuda/release/metaapo, for sm_90 (H200)
#   CUDA_COMPUTE_CAP=80 tools/cuda-build.sh # another GPU generation (here A100)
# Extra arguments go to cargo (e.g. `--bin metaapo`). The toolkit comes from PyPI, cached;
# see tools/cuda-env.sh. Its own target folder keeps the CPU build untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/cuda-env.sh
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}" exec cargo build --release --features cuda "$@"
