#!/usr/bin/env bash
# Sourced by tools/cuda-build.sh: assembles a CUDA 13.0 toolkit from NVIDIA's PyPI wheels in the
# cache ($METAAPO_CACHE, else ~/.cache/metaapo), so `--features cuda` builds on a machine with
# no GPU and no system CUDA. Wheels are pinned to the 13.0 line (the GPU machine's driver is
# CUDA 13.0) and sha256-checked; the toolkit is reused while the pins are unchanged.
#
# The driver library (libcuda.so.1) ships only with a GPU driver, never in a wheel, so a link
# stub defining every driver symbol cudarc declares stands in for it at link time. The binary
# records only the soname, and at run time the real driver answers to it.
set -euo pipefail

CUDA_PINS=(
  "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
  "nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
  "nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
  "nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"
)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${METAAPO_CACHE:-$HOME/.cache/metaapo}/cuda-13.0"
wheels="$cache/wheels"
mkdir -p "$wheels"

# One wheel per pin: download it unless present, then check its sha256 either way.
for pin in "${CUDA_PINS[@]}"; do
  spec="${pin% *}" sum="${pin#* }"
  name="${spec%==*}" version="${spec#*==}"
  pattern="${name//-/_}-${version}-*.whl"
  if ! compgen -G "$wheels/$pattern" >/dev/null; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$spec" -d "$wheels"
  fi
  file="$(compgen -G "$wheels/$pattern" | head -1)"
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  if [[ "$got" != "$sum" ]]; then
    echo "cuda-env: $file has sha256 $got, expected $sum (pinned in tools/cuda-env.sh)" >&2
    exit 1
  fi
done

pins_hash="$(printf '%s\n' "${CUDA_PINS[@]}" | sha256sum | cut -c1-12)"
toolkit="$cache/toolkit-$pins_hash"
if [[ ! -x "$toolkit/bin/nvcc" || ! -e "$toolkit/lib/stubs/libcuda.so" ]]; then
  staging="$(mktemp -d "$cache/.toolkit-XXXXXX")"
  for file in "$wheels"/*.whl; do
    python3 -m zipfile -e "$file" "$staging/"
  done
  root="$staging/nvidia/cu13"
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
  # `-lcublas` and friends need the unversioned names the wheels leave out.
  for lib in "$root"/lib/lib*.so.*; do
    base="${lib%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
  done
  # The driver stub: every `pub unsafe fn cu...` of cudarc's driver bindings, as a no-op.
  cudarc="$(cd "$repo" && cargo metadata --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')"
  mkdir -p "$root/lib/stubs"
  grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$(dirname "$cudarc")/src/driver/sys/mod.rs" |
    sed 's/pub unsafe fn \(.*\)/int \1(void) { return 999; }/' | sort -u >"$root/lib/stubs/libcuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/libcuda.c"
  rm -rf "$toolkit"
  mv "$root" "$toolkit"
  rm -rf "$staging"
  # Toolkits of earlier pins are this script's own leftovers.
  for old in "$cache"/toolkit-*; do
    [[ "$old" == "$toolkit" ]] || rm -rf "$old"
  done
fi

export CUDA_HOME="$toolkit"
export PATH="$toolkit/bin:$PATH"
export LD_LIBRARY_PATH="$toolkit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# No GPU here to ask: H200 by default (sm_90).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
