"""GLM-mask attention vs. plain causal SDPA of the same shape: forward+backward time, peak memory and
*useful* throughput (visible query-key pairs per second), at several sequence lengths for a token-mode
row (Part A ≈ 85 %) and a document-mode row (Part A ≈ 25 %).

    .venv/bin/python bench/attention.py                       # CPU: the sdpa backend
    .venv/bin/python bench/attention.py --backends sdpa flex  # CUDA: both
    .venv/bin/python bench/attention.py --backends sdpa flex --forward-only  # CPU: no Flex backward there

Times: the minimum over --repeats, with the GLM and causal calls interleaved in one process so that
both see the same background load. Peak memory: one call in a fresh subprocess each (CUDA:
max_memory_allocated; CPU: the rise of the peak RSS, Linux VmHWM, over its value just before the call).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from pretrain.model.attention import build_attention, visible_pairs

LAYOUTS = {"token": 0.85, "document": 0.25}  # Part A share of the row


class Case:
    """One (kind, shape); kind is 'causal' or an attention backend name. ``step`` runs one batch."""

    def __init__(self, kind: str, seq_len: int, part_a_share: float, args):
        self.kind, self.device = kind, torch.device(args.device)
        self.grad = not args.forward_only  # Flex on CPU refuses inputs that require grad
        torch.manual_seed(0)
        shape = (args.batch, seq_len)
        self.segment_ids = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.part_a = (torch.arange(seq_len, device=self.device) < round(part_a_share * seq_len)).expand(shape)
        self.part_a = self.part_a.contiguous()
        self.qkv = [torch.randn(args.batch, args.heads, seq_len, args.head_dim, device=self.device,
                                dtype=getattr(torch, args.dtype), requires_grad=self.grad) for _ in range(3)]
        if kind == "causal":
            self.pairs = args.batch * seq_len * (seq_len + 1) // 2
        else:
            self.pairs = int(visible_pairs(self.segment_ids, self.part_a).sum())

    def step(self) -> None:
        if self.kind == "causal":
            out = F.scaled_dot_product_attention(*self.qkv, is_causal=True)
        else:  # the mask structure is built per batch, as the model does
            out = build_attention(self.kind, self.segment_ids, self.part_a)(*self.qkv)
        if self.grad:
            out.sum().backward()
            for t in self.qkv:
                t.grad = None
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            self.step()
            return torch.cuda.max_memory_allocated() - before
        if self.kind == "flex":
            return None  # the CPU high-water mark would be the compiler's, not the kernel's
        before = _peak_rss()
        self.step()
        return _peak_rss() - before


def _peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def peak_in_subprocess(kind: str, seq_len: int, share: float, argv: list[str]) -> int | None:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", f"{kind},{seq_len},{share}"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measuring {kind} at S={seq_len} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def min_times(cases: list[Case], repeats: int) -> list[float]:
    for case in cases:
        case.step()  # warm-up (and compile, for flex)
    times = [[] for _ in cases]
    for _ in range(repeats):
        for case, measured in zip(cases, times):
            start = time.perf_counter()
            case.step()
            measured.append(time.perf_counter() - start)
    return [min(t) for t in times]


def _mib(peak_bytes: int | None) -> str:
    return "n/a" if peak_bytes is None else f"{peak_bytes / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--backends", nargs="+", default=["sdpa"], choices=["sdpa", "flex", "dense"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 keeps busy shared machines from stalling OpenMP barriers)")
    parser.add_argument("--forward-only", action="store_true", help="time the forward pass only (both sides)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        kind, seq_len, share = args.child.split(",")
        print(json.dumps(Case(kind, int(seq_len), float(share), args).peak_bytes()))
        return
    argv = sys.argv[1:]
    passes = "fwd" if args.forward_only else "fwd+bwd"
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} heads={args.heads} "
          f"head_dim={args.head_dim} dtype={args.dtype} repeats={args.repeats} (min time)\n")
    print(f"| S | layout | backend | GLM {passes} s | causal {passes} s | GLM / causal pairs | "
          "useful throughput GLM / causal | GLM peak MiB | causal peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seq_len in args.seq_lens:
        causal_peak = peak_in_subprocess("causal", seq_len, 0.0, argv)
        for layout, share in LAYOUTS.items():
            for backend in args.backends:
                glm, causal = Case(backend, seq_len, share, args), Case("causal", seq_len, share, args)
                glm_s, causal_s = min_times([glm, causal], args.repeats)
                useful = (glm.pairs / glm_s) / (causal.pairs / causal_s)
                print(f"| {seq_len} | {layout} ({share:.0%} A) | {backend} | {glm_s:.3f} | {causal_s:.3f} | "
                      f"{glm.pairs / causal.pairs:.2f} | {useful:.2f} | "
                      f"{_mib(peak_in_subprocess(backend, seq_len, share, argv))} | {_mib(causal_peak)} |", flush=True)
                del glm, causal


if __name__ == "__main__":
    main()
