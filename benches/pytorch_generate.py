"""HF transformers baseline for the candle generation benchmark (benches/generate.rs).

Greedy `generate` with the KV cache on the SmolLM2-135M config (random weights, float32, eager
attention, `--threads` intra-op threads), 32-token prompts, exactly 64 new tokens, batch 1 and 8:
end-to-end tokens/s (median of --repeats after one warm-up) and the prefill time (1 new token).
If target/bench/generate.json exists, prints candle / transformers ratios.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install torch transformers
    /tmp/v/bin/python benches/pytorch_generate.py [--threads 2] [--repeats 2]
"""

import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

PROMPT, NEW = 32, 64


def timed(model, ids, new):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape[1] == PROMPT + new
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--candle-json", default="target/bench/generate.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, max_position_embeddings=2048, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().eval()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}")
    results = {}
    for batch in (1, 8):
        ids = torch.randint(3, cfg.vocab_size, (batch, PROMPT))
        timed(model, ids, 2)
        total = statistics.median(timed(model, ids, NEW) for _ in range(args.repeats))
        prefill = statistics.median(timed(model, ids, 1) for _ in range(args.repeats))
        results[f"batch_{batch}"] = {"tokens_per_s": batch * NEW / total, "total_s": total, "prefill_s": prefill}
        print(f"batch {batch}: {batch * NEW / total:6.1f} tokens/s  ({total:.2f} s, prefill {prefill:.2f} s)")
    if os.path.exists(args.candle_json):
        with open(args.candle_json) as f:
            candle = json.load(f)
        for key, r in results.items():
            c = candle[key]["tokens_per_s"]
            print(f"{key}: candle {c:.1f} tokens/s, transformers {r['tokens_per_s']:.1f}: "
                  f"candle / transformers = {c / r['tokens_per_s']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
