"""PyTorch + transformers peer of `cargo bench --bench dpo`: the same three figures on the same
model shapes (random weights), on the same device and dtype.

  dpo_step_s             policy forward+backward over 4 chosen + 4 rejected 256-token sequences,
                         reference forward under no_grad, sigmoid DPO loss (beta 0.1), AdamW step,
                         zero_grad (median of --steps after one warm-up)
  score_tokens_per_s     no_grad forward and per-token log-probs of the same 8 sequences
  generate_tokens_per_s  model.generate, greedy, 8 prompts of 32 tokens, exactly 64 new tokens

bf16 is mixed precision as TRL runs it: f32 weights and AdamW state, bf16 autocast for the
forward and backward (metaapo keeps bf16 weights with f32 master copies: the same arithmetic).
Eager attention, as metaapo's decoder has no fused attention kernel.

    python3 benches/pytorch_dpo.py [--configs smollm2,llama-1b] [--device cuda] [--dtype bf16] \
        [--candle-json target/bench/dpo.json]
"""

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

CONFIGS = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0),
    "30m": dict(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    # the default built-in world's policy (vocabulary: 3 specials + "0123456789+=- ")
    "world": dict(vocab_size=17, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0),
}
# pairs per step, tokens per sequence, prompt tokens, new tokens, generation batch (benches/dpo.rs)
SHAPES = {"world": (32, 16, 8, 8, 64)}
DEFAULT_SHAPE = (4, 256, 32, 64, 8)
FIELDS = ("dpo_step_s", "score_tokens_per_s", "generate_tokens_per_s")


def seq_logps(model, ids, prompt):
    logits = model(input_ids=ids).logits[:, prompt - 1:-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, prompt:, None]).squeeze(-1).sum(-1)


def run_one(name, args):
    PAIRS, SEQ, PROMPT, NEW, GEN_BATCH = SHAPES.get(name, DEFAULT_SHAPE)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = LlamaConfig(**CONFIGS[name], rms_norm_eps=1e-5, tie_word_embeddings=True,
                      max_position_embeddings=2048, attn_implementation="eager")
    with dev:
        policy = LlamaForCausalLM(cfg).float()
    reference = copy.deepcopy(policy).to(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    reference.eval()
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())
    ids = torch.randint(3, cfg.vocab_size, (2 * PAIRS, SEQ), device=dev)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def dpo_step():
        sync()
        t = time.perf_counter()
        with autocast:
            pol = seq_logps(policy, ids, PROMPT)
            with torch.no_grad():
                ref = seq_logps(reference, ids, PROMPT)
        delta = (pol[:PAIRS] - ref[:PAIRS]) - (pol[PAIRS:] - ref[PAIRS:])
        loss = -F.logsigmoid(0.1 * delta).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t

    policy.train()
    dpo_step()
    step = statistics.median(dpo_step() for _ in range(args.steps))
    del opt, policy

    def timed(f):
        sync()
        t = time.perf_counter()
        f()
        sync()
        return time.perf_counter() - t

    with torch.no_grad():
        score = [timed(lambda: seq_logps(reference, ids, PROMPT).tolist()) for _ in range(4)][1:]
        prompts = torch.randint(3, cfg.vocab_size, (GEN_BATCH, PROMPT), device=dev)
        mask = torch.ones_like(prompts)
        gen = [timed(lambda: reference.generate(
            input_ids=prompts, attention_mask=mask, do_sample=False, max_new_tokens=NEW,
            min_new_tokens=NEW, pad_token_id=0)) for _ in range(3)][1:]
    return {"params": sum(p.numel() for p in reference.parameters()), "dpo_step_s": step,
            "score_tokens_per_s": 2 * PAIRS * SEQ / statistics.median(score),
            "generate_tokens_per_s": GEN_BATCH * NEW / statistics.median(gen)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="smollm2", help="comma-separated: " + ",".join(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--candle-json", default="target/bench/dpo.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for name in args.configs.split(","):
        if name not in CONFIGS:
            sys.exit(f"unknown config {name!r} (known: {', '.join(CONFIGS)})")
        r = results[name] = run_one(name, args)
        print(f"{name:>9}: {r['params']:>11} params  DPO step {r['dpo_step_s']:7.3f} s  scoring "
              f"{r['score_tokens_per_s']:8.0f} tokens/s  generation {r['generate_tokens_per_s']:7.0f} tokens/s")
    report = {"engine": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
              "device": args.device, "dtype": args.dtype, "configs": results}
    if os.path.exists(args.candle_json):
        with open(args.candle_json) as f:
            candle = json.load(f)
        print(f"\nmetaapo ({args.candle_json}, {candle.get('device')} {candle.get('dtype')}) / PyTorch:")
        print(f"{'config':<10}{'DPO step time':>15}{'scoring tok/s':>15}{'generation tok/s':>18}")
        for name, py in results.items():
            c = candle.get("configs", {}).get(name)
            if c:
                cells = [c[k] / py[k] for k in FIELDS]
                print(f"{name:<10}{cells[0]:>14.2f}x{cells[1]:>14.2f}x{cells[2]:>17.2f}x")
        print("(time < 1 and tokens/s > 1 mean metaapo is faster)")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
