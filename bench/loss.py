"""Head matmul + cross entropy, forward and backward: the chunked loss the trainer runs
(pretrain.train.loss.chunked_cross_entropy) against the previous path that materialised float32 logits
[B·S, V] (``F.linear(h, W).float()`` + ``token_cross_entropy``), same inputs, same run.

    .venv/bin/python bench/loss.py                                  # vocab 151,552, seq 2048
    .venv/bin/python bench/loss.py --seq-len 8192                   # the issue's size: ~20 GB for the baseline

Reported per path: the minimum time over --repeats (the two paths interleaved, so both see the same
load) and the peak memory of one forward+backward in a fresh subprocess (CUDA: max_memory_allocated
above the inputs; CPU: the rise of the peak RSS, Linux VmHWM, over its value once the inputs and the
weight exist). Hidden states and the weight exist before the call on both sides and are not counted.
The parent checks that both paths give the same loss and gradients before timing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from pretrain.train.loss import chunked_cross_entropy, chunk_tokens_for, token_cross_entropy

PATHS = ("logits", "chunked")


class Case:
    def __init__(self, args):
        self.device = torch.device(args.device)
        dtype = getattr(torch, args.dtype)
        generator = torch.Generator().manual_seed(0)
        tokens = args.batch * args.seq_len
        self.hidden = (torch.randn(args.batch, args.seq_len, args.hidden, generator=generator) / args.hidden ** 0.5
                       ).to(self.device, dtype).requires_grad_()
        self.weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02
                       ).to(self.device, dtype).requires_grad_()
        self.targets = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=generator).to(self.device)
        mask = (torch.rand(args.batch, args.seq_len, generator=generator) < 0.5).float().to(self.device)
        self.token_weights = mask / mask.sum()
        self.chunk = args.chunk_tokens or chunk_tokens_for(self.weight)
        assert tokens > 0

    def step(self, path: str) -> float:
        """One forward + backward; returns the loss."""
        if path == "logits":
            logits = F.linear(self.hidden, self.weight).float()  # [B, S, V]
            loss = (token_cross_entropy(logits, self.targets) * self.token_weights).sum()
        else:
            loss, _ = chunked_cross_entropy(self.hidden, self.weight, self.targets, self.token_weights, self.chunk)
        loss.backward()
        _sync(self.device)
        return loss.item()

    def clear_grads(self) -> None:
        self.hidden.grad = self.weight.grad = None

    def peak_bytes(self, path: str) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            self.step(path)
            return torch.cuda.max_memory_allocated() - before
        before = _peak_rss()
        self.step(path)
        return _peak_rss() - before


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def peak_in_subprocess(path: str, argv: list[str]) -> int:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", path], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measuring {path} failed (exit status {out.returncode}; -9: killed, e.g. out of "
                         f"memory):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_equal(case: Case) -> tuple[float, float]:
    """(|Δloss| relative, max |Δgrad| relative to the gradient's max) between the two paths."""
    results = []
    for path in PATHS:
        case.clear_grads()
        loss = case.step(path)
        results.append((loss, case.hidden.grad.clone(), case.weight.grad.clone()))
    case.clear_grads()
    (loss_a, gh_a, gw_a), (loss_b, gh_b, gw_b) = results
    grad_err = max(((a - b).abs().max() / a.abs().max()).item() for a, b in ((gh_a, gh_b), (gw_a, gw_b)))
    return abs(loss_a - loss_b) / abs(loss_a), grad_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151552, help="GLM-4's vocabulary")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=512,
                        help="hidden size (GLM-4-9B: 4096; smaller keeps the CPU matmuls minutes, not hours)")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="default: the trainer's (loss.py)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    case = Case(args)
    if args.child:
        print(json.dumps(case.peak_bytes(args.child)))
        return
    argv = [a for a in sys.argv[1:]]
    print(f"device={args.device} threads={torch.get_num_threads()} vocab={args.vocab} batch={args.batch} "
          f"seq={args.seq_len} hidden={args.hidden} dtype={args.dtype} chunk={case.chunk} tokens "
          f"repeats={args.repeats} (min time)", flush=True)
    peaks = {path: peak_in_subprocess(path, argv) for path in PATHS}  # first: the parent holds nothing big yet
    loss_err, grad_err = check_equal(case)
    print(f"chunked vs logits: relative |Δloss| {loss_err:.1e}, max |Δgrad| / max |grad| {grad_err:.1e}", flush=True)
    best = {path: float("inf") for path in PATHS}
    for _ in range(args.repeats):
        for path in PATHS:
            start = time.perf_counter()
            case.step(path)
            best[path] = min(best[path], time.perf_counter() - start)
            case.clear_grads()
    print("\n| path | fwd+bwd s | peak MiB | time vs logits | speed vs logits | peak vs logits |")
    print("|---|---|---|---|---|---|")
    for path in PATHS:
        print(f"| {path} | {best[path]:.3f} | {peaks[path] / 2**20:.0f} | {best[path] / best['logits']:.2f}x | "
              f"{best['logits'] / best[path]:.2f}x | {peaks[path] / peaks['logits']:.3f} |")


if __name__ == "__main__":
    main()
