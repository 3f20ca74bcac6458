"""PyTorch CPU baseline for the candle engine benchmark.

For each config (random weights, float32, eager attention, `--threads` intra-op threads) it measures
  train_step_s        one step on a 4 x 256 random batch: forward, mean next-token cross entropy,
                      backward, AdamW(lr=1e-5) step, zero_grad (1 warm-up, then median of --steps)
  score_tokens_per_s  no_grad forward + per-token log-probs of the same batch (median of 3),
                      counted as batch * seq tokens
  peak_rss_mb         ru_maxrss of the process in MiB (the key says mb); every config runs in its own subprocess
and prints a JSON object {"configs": {name: {...}}} at the end. If --candle-json (default
target/bench/engine.json, same shape) exists, it also prints candle/PyTorch ratios. A `-bf16`
config runs its forward and loss under CPU autocast to bfloat16 (f32 master weights and AdamW
state, as candle's `--matmul bf16`); its candle figures are compared with PyTorch's autocast and
with PyTorch's eager f32 of the base config.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install torch transformers
    /tmp/v/bin/python benches/pytorch_engine.py [--configs 30m,smollm2] [--threads 2] [--steps 3]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

CONFIGS = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0),
    "30m": dict(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0),
}
FIELDS = ("train_step_s", "score_tokens_per_s", "peak_rss_mb")
# A config name ending in this trains with gradient checkpointing per decoder layer (TRL's
# `gradient_checkpointing`), the same as the candle benchmark's config of that name.
CHECKPOINTED = "-checkpointed"
# A config name ending in this multiplies under CPU autocast to bfloat16.
BF16 = "-bf16"


def base_of(name):
    return name.removesuffix(BF16).removesuffix(CHECKPOINTED)


def token_logps(model, ids):
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def run_one(name, args):
    """Runs in the worker subprocess; returns the figures for one config."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = base_of(name)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith(BF16))
    cfg = LlamaConfig(**CONFIGS[base], rms_norm_eps=1e-5, tie_word_embeddings=True,
                      max_position_embeddings=2048, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float()
    if name.removesuffix(BF16).endswith(CHECKPOINTED):
        model.config.use_cache = False
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step():
        t = time.perf_counter()
        with autocast:
            lp = token_logps(model, ids)
            loss = -lp.sum() / lp.numel()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t

    model.train()
    train_step()  # warm-up
    train = statistics.median(train_step() for _ in range(args.steps))

    model.eval()
    with torch.no_grad(), autocast:
        token_logps(model, ids)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            token_logps(model, ids)
            times.append(time.perf_counter() - t)
    score = args.batch * args.seq / statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    params = sum(p.numel() for p in model.parameters())
    return {"train_step_s": train, "score_tokens_per_s": score, "peak_rss_mb": rss, "params": params}


def compare(results, path):
    with open(path) as f:
        candle = json.load(f).get("configs", {})
    print(f"\ncandle ({path}) / PyTorch:")
    print(f"{'config':<22}{'train step time':>17}{'scoring tok/s':>15}{'peak RSS':>10}")
    for name, py in results.items():
        c = candle.get(name)
        if not c:
            continue
        cells = [c.get(k, float("nan")) / py[k] for k in FIELDS]
        print(f"{name:<22}{cells[0]:>16.2f}x{cells[1]:>14.2f}x{cells[2]:>9.2f}x")
        f32 = results.get(name.removesuffix(BF16))
        if name.endswith(BF16) and f32:
            cells = [c.get(k, float("nan")) / f32[k] for k in FIELDS]
            label = "  vs PyTorch f32"
            print(f"{label:<22}{cells[0]:>16.2f}x{cells[1]:>14.2f}x{cells[2]:>9.2f}x")
    print("(time < 1 and tok/s > 1 mean candle is faster; RSS < 1 means candle uses less memory)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(["smollm2", "30m", "smollm2" + CHECKPOINTED, "30m" + BF16,
                                                     "smollm2" + BF16]),
                    help=f"comma-separated: {', '.join(CONFIGS)}, each optionally with {CHECKPOINTED} "
                         f"and/or {BF16} (in that order)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--candle-json", default="target/bench/engine.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(run_one(args.worker, args)))
        return

    results = {}
    for name in args.configs.split(","):
        if base_of(name) not in CONFIGS:
            sys.exit(f"unknown config {name!r} (known: {', '.join(CONFIGS)})")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--threads", str(args.threads),
               "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        r = results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: train step {r['train_step_s']:.3f} s  (batch {args.batch}x{args.seq}, "
              f"{args.threads} threads, median of {args.steps})")
        print(f"{name}: scoring {r['score_tokens_per_s']:.0f} tokens/s")
        print(f"{name}: peak RSS {r['peak_rss_mb']:.0f} MiB  ({r['params'] / 1e6:.1f}M params)")

    report = {"engine": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": args.threads, "batch": args.batch, "seq": args.seq, "steps": args.steps,
              "configs": results}
    if os.path.exists(args.candle_json):
        compare(results, args.candle_json)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
