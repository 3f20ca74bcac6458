#!/usr/bin/env bash
# Every CPU speed figure against its peer, from one sitting (the machine is noisy, so only
# same-run ratios mean much): the training step, scoring and peak memory (with and without
# gradient checkpointing) against PyTorch eager f32, greedy generation at batch 1 and 8 against
# transformers `generate`, the default world's tiny policy (DPO step, scoring, generation) against
# the same in PyTorch, and a full default-world metaapo_dpo.rhai run with its world cached.
#
#   PYTHON=/tmp/v/bin/python benches/cpu.sh      # PYTHON: an interpreter with torch and transformers
#
# (python3 -m venv /tmp/v && /tmp/v/bin/pip install torch transformers) makes one.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if ! "$py" -c "import torch, transformers" 2>/dev/null; then
  echo "$py cannot import torch and transformers; set PYTHON (see the header of $0)" >&2
  exit 2
fi
threads="${RAYON_NUM_THREADS:-$(nproc)}"

echo "== training step, scoring, peak memory"
cargo bench --quiet --bench engine
"$py" benches/pytorch_engine.py --threads "$threads" | sed '/^{/,$d'

echo "== greedy generation"
cargo bench --quiet --bench generate
"$py" benches/pytorch_generate.py --threads "$threads" | grep -v '^{'

echo "== the default world's policy (108k parameters): DPO step, scoring, generation"
cargo bench --quiet --bench dpo -- world --steps 20 --json target/bench/dpo-world.json | grep world:
"$py" benches/pytorch_dpo.py --configs world --steps 20 --threads "$threads" \
  --candle-json target/bench/dpo-world.json | sed -n '/^metaapo (/,$p'

echo "== default world: scripts/metaapo_dpo.rhai, world cached"
cargo build --quiet --release
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
./target/release/metaapo script scripts/metaapo_dpo.rhai --out "$out/warm" >/dev/null
start=$(date +%s.%N)
./target/release/metaapo script scripts/metaapo_dpo.rhai --out "$out/timed" >/dev/null
awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "metaapo_dpo.rhai: %.2f s\n", e - s }'
