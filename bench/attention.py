"""GLM-mask attention vs. plain causal SDPA of the same shape: forward+backward time, peak memory and
*useful* throughput (visible query-key pairs per second), at several sequence lengths for a token-mode
row (Part A ≈ 85 %) and a document-mode row (Part A ≈ 25 %).

    .venv/bin/python bench/attention.py                       # CPU: the sdpa backend
    .venv/bin/python bench/attention.py --backends sdpa flex  # CUDA: both
    .venv/bin/python bench/attention.py --backends sdpa flex --forward-only  # CPU: no Flex backward there

Each measurement runs in a fresh subprocess so that its peak memory (CUDA: max_memory_allocated; CPU:
the rise of peak RSS over the process's state just before the first call) belongs to it alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from pretrain.model.attention import build_attention, visible_pairs

LAYOUTS = {"token": 0.85, "document": 0.25}  # Part A share of the row


def measure(kind: str, seq_len: int, part_a_share: float, args) -> dict:
    """One (kind, shape) measurement; kind is 'causal' or an attention backend name."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (args.batch, seq_len)
    segment_ids = torch.zeros(shape, dtype=torch.long, device=device)
    part_a = (torch.arange(seq_len, device=device) < round(part_a_share * seq_len)).expand(shape).contiguous()
    dtype = getattr(torch, args.dtype)
    q = torch.randn(args.batch, args.heads, seq_len, args.head_dim, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn_like(q, requires_grad=True) for _ in range(2))
    if kind == "causal":
        pairs = args.batch * seq_len * (seq_len + 1) // 2
        attend = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    else:
        pairs = int(visible_pairs(segment_ids, part_a).sum())
        attend = None

    def step():
        fn = attend or build_attention(kind, segment_ids, part_a)  # per batch, as the model does
        with torch.set_grad_enabled(not args.forward_only):
            out = fn(q, k, v)
        if not args.forward_only:
            out.sum().backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    step()  # warm-up (and compile, for flex); also the peak-memory measurement
    sync()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - allocated_before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    times = []
    for _ in range(args.repeats):
        q.grad = k.grad = v.grad = None
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_bytes": peak, "pairs": pairs}


def run_isolated(kind: str, seq_len: int, share: float, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", f"{kind},{seq_len},{share}"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--backends", nargs="+", default=["sdpa"], choices=["sdpa", "flex", "dense"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--forward-only", action="store_true", help="time the forward pass only (both sides)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, seq_len, share = args.child.split(",")
        print(json.dumps(measure(kind, int(seq_len), float(share), args)))
        return
    argv = sys.argv[1:]
    passes = "fwd" if args.forward_only else "fwd+bwd"
    print(f"device={args.device} batch={args.batch} heads={args.heads} head_dim={args.head_dim} "
          f"dtype={args.dtype} repeats={args.repeats} (min time)\n")
    print(f"| S | layout | backend | GLM {passes} s | causal {passes} s | GLM / causal pairs | "
          "useful throughput GLM / causal | GLM peak MiB | causal peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seq_len in args.seq_lens:
        causal = run_isolated("causal", seq_len, 0.0, argv)
        for layout, share in LAYOUTS.items():
            for backend in args.backends:
                glm = run_isolated(backend, seq_len, share, argv)
                useful = (glm["pairs"] / glm["seconds"]) / (causal["pairs"] / causal["seconds"])
                print(f"| {seq_len} | {layout} ({share:.0%} A) | {backend} | {glm['seconds']:.3f} | "
                      f"{causal['seconds']:.3f} | {glm['pairs'] / causal['pairs']:.2f} | {useful:.2f} | "
                      f"{glm['peak_bytes'] / 2**20:.0f} | {causal['peak_bytes'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
