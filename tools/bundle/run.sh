#!/usr/bin/env bash
# Runs on the GPU machine, from the unpacked bundle:  ./run.sh [RESULTS_DIR]
# 1. metaapo selftest --device cuda, in f32 and in bf16 (GPU against CPU, same weights);
# 2. the DPO benchmark (SmolLM2-135M and Llama-3.2-1B shapes, random weights, bf16) in
#    metaapo, then in PyTorch + transformers on the same GPU, and the ratios.
# 3. dpo.rhai on the tiny built-in world, on the GPU in bf16 (a script end to end).
# Each step's output goes to RESULTS_DIR (default ./results) as it finishes.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
results="${1:-$here/results}"
mkdir -p "$results"

# The CUDA 13.0 libraries: wherever the loader already finds them, else a CUDA install, else the
# wheels pip installed (PyTorch's nvidia-* dependencies).
if ldd "$here/metaapo" | grep -q "not found"; then
  dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64)
  site="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)"
  for s in $site; do dirs+=("$s"/nvidia/cu13/lib "$s"/nvidia/*/lib); done
  for d in "${dirs[@]}"; do
    [[ -d "$d" ]] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  export LD_LIBRARY_PATH
fi
{
  cat "$here/COMMIT"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  ldd "$here/metaapo" | grep -E "cuda|cublas|curand|nvrtc"
  ldd --version | head -1
} 2>&1 | tee "$results/machine.txt"

status=0
for dtype in f32 bf16; do
  "$here/metaapo" selftest --device cuda --dtype "$dtype" 2>&1 | tee "$results/selftest-$dtype.txt"
  ((PIPESTATUS[0] == 0)) || status=1
done
"$here/dpo-bench" smollm2 llama-1b --device cuda --dtype bf16 --json "$results/metaapo-bench.json" \
  2>&1 | tee "$results/metaapo-bench.txt" || status=1
python3 "$here/pytorch_dpo.py" --configs smollm2,llama-1b --device cuda --dtype bf16 \
  --candle-json "$results/metaapo-bench.json" 2>&1 | tee "$results/pytorch-bench.txt" || status=1
METAAPO_CACHE="$results/cache" timeout 150 "$here/metaapo" script dpo --device cuda --dtype bf16 \
  --set world=tiny --out "$results/dpo-tiny" 2>&1 | tail -40 | tee "$results/dpo-tiny.txt"
exit $status
