#!/usr/bin/env bash
# Packs the CUDA build for a GPU machine that has no Rust and no network:
#   tools/cuda-bundle.sh [OUT]      # default target/cuda/metaapo-cuda.tar.xz
# The bundle holds metaapo and the DPO benchmark (both stripped), the PyTorch peer benchmark,
# run.sh (self-checks, then the benchmark against PyTorch on the same GPU) and a README. It
# needs only the NVIDIA driver and the CUDA 13.0 libraries there (see tools/bundle/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/cuda/metaapo-cuda.tar.xz}"
limit=$((60 * 1024 * 1024))

tools/cuda-build.sh --bin metaapo --bench dpo
source tools/cuda-env.sh
bench="$(CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}" cargo build --release --features cuda \
  --bench dpo --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "dpo" and m.get("executable"):
        print(m["executable"])')"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dir="$stage/metaapo-cuda"
mkdir -p "$dir"
strip -o "$dir/metaapo" "${CARGO_TARGET_DIR:-target/cuda}/release/metaapo"
strip -o "$dir/dpo-bench" "$bench"
cp benches/pytorch_dpo.py tools/bundle/run.sh tools/bundle/README.md "$dir/"
chmod +x "$dir/run.sh"
git rev-parse HEAD >"$dir/COMMIT" 2>/dev/null || true
echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >>"$dir/COMMIT"

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf - metaapo-cuda | xz -9 -T0 >"$out.partial"
size=$(stat -c %s "$out.partial")
if ((size > limit)); then
  rm -f "$out.partial"
  echo "cuda-bundle: the bundle is $((size / 1024 / 1024)) MiB, over the 60 MiB limit" >&2
  exit 1
fi
mv "$out.partial" "$out"
echo "wrote $out ($((size / 1024 / 1024)) MiB; sm_$CUDA_COMPUTE_CAP)"
