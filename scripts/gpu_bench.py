"""GPU throughput: folo_edu vs transformers generate on the Qwen3-0.6B shape.

nano-vllm's bench shape: 256 requests, prompt and output lengths uniform in
[100, 1024], random token ids, greedy with ignore_eos. The weights are random
(Qwen3-0.6B's published config, nothing downloaded): throughput does not depend
on the values. transformers runs the same requests in static batches with left
padding; only useful output tokens count for either side.

    python scripts/gpu_bench.py --out results.json           # on a GPU
    python scripts/gpu_bench.py --smoke --out /tmp/s.json     # a tiny CPU dry run
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Qwen3-0.6B config.json as published on the Hugging Face hub (Qwen/Qwen3-0.6B).
QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                  vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
SMOKE = dict(QWEN3_0_6B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_model(folder: Path, spec: dict, dtype) -> Path:
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**spec, bos_token_id=1, eos_token_id=2)
    config.architectures = ["Qwen3ForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    return folder


def workload(n, lo, hi, vocab, seed):
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
    outs = [rng.randint(lo, hi) for _ in range(n)]
    return prompts, outs


def bench_folo(path, prompts, outs, device, dtype, max_len, backend, repeats):
    from folo_edu import LLM, SamplingParams

    llm = LLM(str(path), device=device.type, dtype=dtype, max_model_len=max_len,
              max_num_seqs=len(prompts), max_num_batched_tokens=max(16384, max_len),
              skip_tokenizer_init=True, attention_backend=backend)
    params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for o in outs]
    reqs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(reqs[:4], params[:4], use_tqdm=False)  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        res = llm.generate(reqs, params, use_tqdm=False)
        sync(device)
        times.append(time.perf_counter() - t)
        assert [len(r.outputs[0].token_ids) for r in res] == outs
    return times, llm.llm_engine.get_stats()


def bench_hf(path, prompts, outs, device, dtype, batch, repeats):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for i in range(0, len(prompts), batch):
            ps, os_ = prompts[i:i + batch], outs[i:i + batch]
            width = max(map(len, ps))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in ps], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps],
                                device=device)
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(os_),
                               do_sample=False, pad_token_id=0)
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny model and workload, any device")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backends", default="sdpa")
    ap.add_argument("--no-hf", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec, (lo, hi) = (SMOKE, (10, 40)) if args.smoke else (QWEN3_0_6B, (100, 1024))
    n = 8 if args.smoke else args.requests
    prompts, outs = workload(n, lo, hi, spec["vocab_size"], seed=0)
    useful = sum(outs)
    result = {"machine": {"device": torch.cuda.get_device_name() if device.type == "cuda"
                          else platform.processor() or platform.machine(),
                          "torch": torch.__version__, "python": sys.version.split()[0]},
              "model": "Qwen3-0.6B config, random weights" if not args.smoke else "smoke",
              "dtype": str(dtype), "requests": n, "len_range": [lo, hi],
              "useful_output_tokens": useful, "folo_edu": {}, "note":
              "eager PyTorch (no CUDA graphs yet: milestone M4); medians over repeats"}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_model(Path(tmp) / "model", spec, dtype)
        for backend in args.backends.split(","):
            times, stats = bench_folo(path, prompts, outs, device, "bfloat16" if
                                      device.type == "cuda" else "float32", 2 * hi, backend,
                                      args.repeats)
            med = statistics.median(times)
            result["folo_edu"][backend] = {"seconds": times, "output_tok_s": useful / med,
                                           "stats": stats}
            print(f"folo_edu[{backend}]: {useful / med:,.0f} output tok/s ({med:.1f} s)",
                  flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2))  # keep partial results
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.no_hf:
            times = bench_hf(path, prompts, outs, device, dtype, args.hf_batch, args.repeats)
            med = statistics.median(times)
            result["transformers_static"] = {"batch": args.hf_batch, "seconds": times,
                                             "output_tok_s": useful / med}
            print(f"transformers static batch {args.hf_batch}: {useful / med:,.0f} tok/s",
                  flush=True)
            for b, r in result["folo_edu"].items():
                r["ratio_vs_transformers"] = r["output_tok_s"] / (useful / med)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
