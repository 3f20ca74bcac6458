#!/usr/bin/env bash
# Prints the python of a virtualenv holding llama.cpp's OpenAI-compatible server
# (`python -m llama_cpp.server`), building it on first use: llama-cpp-python compiles llama.cpp
# from source (about 5 minutes on 2 cores), so the venv is cached in $METAAPO_CACHE (else
# ~/.cache/metaapo) and reused while tools/llama-server-requirements.txt is unchanged. A build
# that fails or is interrupted leaves no venv that looks finished.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reqs="$repo/tools/llama-server-requirements.txt"
tag="$(sha256sum "$reqs" | cut -c1-12)"
root="${METAAPO_CACHE:-$HOME/.cache/metaapo}/llama-server"
venv="$root/venv-$tag"

if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$root"
  # One builder at a time (test binaries may ask concurrently); the others wait for it.
  exec 9>"$root/.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    echo "building the llama.cpp server into $venv (once; about 5 minutes)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --no-cache-dir -r "$reqs" >&2
    touch "$venv/.complete"
    # Venvs of older pins are this script's own; remove them.
    for old in "$root"/venv-*; do
      [ "$old" = "$venv" ] || rm -rf "$old"
    done
  fi
fi
echo "$venv/bin/python"
