"""``python -m pretrain train --config FILE [section.key=value ...]`` (also under torchrun)."""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config (YAML), e.g. configs/smoke.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides, parsed as YAML values (train.max_steps=50 parallel.tp=1)")


def main(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    # a native crash (SIGSEGV, SIGABRT in torch, gloo or NCCL) prints every thread's Python stack, so the
    # worker that died says where, instead of leaving only its peers' connection errors (the process's
    # own stderr: sys.stderr may be a stream without a file descriptor, e.g. captured in-process)
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The global grad norm of a (dp, tp) model is reduced over both mesh dims; DTensor warns each run
    # that this takes two all-reduces. It is one scalar per step: not worth the noise.
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    try:  # a refusal (config, data, resume, checkpoint, topology) becomes one line and exit 2: cli/_errors.py
        from pretrain.train.config import load_config  # torch and the packages load only now
        from pretrain.train.loop import Trainer
        cfg = load_config(args.config, args.overrides)
        Trainer(cfg).train()
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
