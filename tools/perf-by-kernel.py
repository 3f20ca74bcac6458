#!/usr/bin/env python3
"""Groups `perf script` samples by the innermost engine kernel or candle op on their stack.

    RAYON_NUM_THREADS=1 perf record -F 150 --call-graph dwarf,16384 -o P \\
        target/release/metaapo script scripts/metaapo_dpo.rhai
    perf script -i P | python3 tools/perf-by-kernel.py

Prints each group's share of the samples, largest first. Samples whose stack names none of
these frames are grouped by their leaf symbol, as `other: <symbol>`.
"""
import collections
import re
import sys

FRAME = re.compile(
    r"(metaapo_engine::kernels::[a-z_0-9]+|metaapo_engine::generate::[a-z_]+"
    r"|metaapo_engine::train::optimizer|candle_core::cpu_backend::MatMul"
    r"|candle_core::cpu::kernels|candle_core::cpu_backend::utils::binary_map"
    r"|candle_core::cpu_backend::utils::unary_map|candle_core::cpu_backend::copy_strided"
    r"|candle_core::cpu_backend::[A-Za-z_]+|rhai::)"
)


def main():
    groups, total = collections.Counter(), 0
    for sample in sys.stdin.read().split("\n\n"):
        frames = [line.strip() for line in sample.strip().split("\n")[1:]]
        if not frames:
            continue
        total += 1
        leaf = re.sub(r"\+0x[0-9a-f]+.*", "", frames[0].split(" ", 1)[-1])[:50]
        owner = "other: " + leaf
        for frame in frames:
            found = FRAME.search(frame)
            if found and "kernels::on_floats" not in frame:
                owner = found.group(1)
                break
        groups[owner] += 1
    for owner, n in groups.most_common(25):
        print(f"{100 * n / total:5.1f}%  {owner}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
