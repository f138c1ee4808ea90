"""KV-cached GLM blank filling vs recomputing the whole sequence at every step (the baseline, same
run): tokens written per second and the speed-up, for a GLM-4-shaped model with random weights.

    .venv/bin/python bench/generate.py                                   # CPU
    .venv/bin/python bench/generate.py --device cuda --hidden 1024 --layers 8 --part-a 256 1024 --batch 16

Each prompt is --part-a random tokens framed [cls] ... [eos] with one [MASK] in the middle; eop and
eos are banned, so every blank gets exactly --new-tokens tokens: both paths do the same decoding
steps, and their greedy fills are checked equal. Times: the minimum over --repeats, cached and
recomputed calls interleaved so that both see the same background load, after one warm-up each.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pretrain.generate.infill import fill_blanks
from pretrain.model import build_model
from pretrain.tokens import SpecialTokens

SPECIAL = SpecialTokens()


def prompts(batch: int, part_a: int, vocab: int) -> list[np.ndarray]:
    rs = np.random.default_rng(0)
    rows = []
    for _ in range(batch):
        text = rs.integers(8, vocab, part_a - 3)
        middle = len(text) // 2
        rows.append(np.r_[SPECIAL.cls, text[:middle], SPECIAL.mask, text[middle:], SPECIAL.eos])
    return rows


def timed(model, rows, args, use_cache: bool) -> tuple[float, list]:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fills = fill_blanks(model, rows, SPECIAL, max_new_tokens=args.new_tokens, banned=[SPECIAL.eop, SPECIAL.eos],
                        use_cache=use_cache)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, fills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="prompts decoded together")
    parser.add_argument("--part-a", type=int, nargs="+", default=[64, 256], help="prompt lengths (tokens)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens written into each blank")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("glm-4-9b", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                        num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                        ffn_hidden_size=args.hidden * 8 // 3 // 64 * 64,
                        max_position_embeddings=max(args.part_a) + args.new_tokens,
                        attention_backend="sdpa")  # the recompute baseline: Flex would recompile per length
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device}, torch {torch.__version__}, {args.dtype}")
    print(f"model: GLM-4 arch, hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads}, "
          f"vocab {args.vocab}; batch {args.batch}, {args.new_tokens} new tokens per blank, best of {args.repeats}")
    print("| Part A tokens | recompute tok/s | cached tok/s | speed-up |\n|---|---|---|---|")
    for part_a in args.part_a:
        rows = prompts(args.batch, part_a, args.vocab)
        best = {True: float("inf"), False: float("inf")}
        results = {}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for use_cache in (False, True):
                seconds, results[use_cache] = timed(model, rows, args, use_cache)
                if repeat:
                    best[use_cache] = min(best[use_cache], seconds)
        if results[True] != results[False]:
            raise SystemExit(f"Part A {part_a}: cached and recomputed fills differ")
        written = args.batch * args.new_tokens
        print(f"| {part_a} | {written / best[False]:,.0f} | {written / best[True]:,.0f} | "
              f"{best[False] / best[True]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
