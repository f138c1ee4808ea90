"""Checkpoint saves: how long training waits for a synchronous DCP save vs an asynchronous one (DCP
async_save: a copy to CPU memory, then a background thread writes), and how long that write takes.

Run: .venv/bin/python bench/checkpoint.py [--preset glm-base] [--repeats 2] [--dir /tmp/ckpt-bench]

One process on a 1 x 1 mesh (FSDP2-wrapped, as the trainer saves), model + AdamW state after one step,
written by the torch engine exactly as the trainer does (pretrain.parallel.engine.TorchEngine.save).
The two modes alternate, so machine load hits both; the ratio "training blocked, async / sync" is the
number that matters for a SIGTERM save inside a launcher's kill window.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.model import GLMModel, model_config
from pretrain.parallel.engine import TorchEngine
from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed
from pretrain.parallel.parallelize import parallelize
from pretrain.train.config import TrainConfig
from pretrain.train.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="glm-base")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ckpt-bench"))
    args = parser.parse_args()
    init_distributed("cpu")
    mesh = build_mesh("cpu", ParallelDims(1, 1))
    torch.manual_seed(0)
    model = parallelize(GLMModel(model_config(args.preset)), mesh, sequence_parallel=False,
                        activation_checkpointing=False, compile=False, param_dtype=torch.float32,
                        reshard_after_forward=True)
    optimizer = build_optimizer(model, TrainConfig())
    engine = TorchEngine([model], [optimizer])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # Adam state exists
    group = dist.new_group(backend="gloo")
    times: dict[str, list[tuple[float, float]]] = {"sync": [], "async": []}
    for repeat in range(args.repeats):
        for mode in times:
            path = args.dir / f"{mode}-{repeat}"
            shutil.rmtree(path, ignore_errors=True)
            start = time.perf_counter()
            future = engine.save(path, group if mode == "async" else None)
            blocked = time.perf_counter() - start
            if future is not None:
                future.result()
            times[mode].append((blocked, time.perf_counter() - start))
    size = sum(f.stat().st_size for f in (args.dir / "sync-0").rglob("*") if f.is_file()) / 2**30
    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, checkpoint "
          f"{size:.2f} GiB, {os.cpu_count()} CPUs, torch {torch.__version__}")
    for mode, runs in times.items():
        print(f"  {mode:>5}: training blocked {statistics.median(b for b, _ in runs):6.2f} s, written after "
              f"{statistics.median(t for _, t in runs):6.2f} s (median of {len(runs)})")
    ratio = statistics.median(b for b, _ in times["async"]) / statistics.median(b for b, _ in times["sync"])
    print(f"  training blocked, async / sync: {ratio:.2f}")
    shutil.rmtree(args.dir, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
