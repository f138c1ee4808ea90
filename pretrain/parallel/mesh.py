"""The process group and the (dp, tp) device mesh, from the torchrun environment.

Without torchrun (plain ``python -m pretrain train``) this is a one-process group, so the rest of the
trainer has a single code path. Ranks that share a ``dp`` coordinate hold one model replica split by
tensor parallelism; they see the same batch. tp is the inner dimension so that TP stays inside a node.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class ParallelDims:
    world_size: int
    tp: int

    @property
    def dp(self) -> int:
        return self.world_size // self.tp

    def validate(self) -> None:
        if self.world_size % self.tp:
            raise ValueError(f"world size {self.world_size} is not divisible by parallel.tp={self.tp}; "
                             f"launch a multiple of {self.tp} processes or change parallel.tp")


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str, timeout_s: float = 600.0) -> None:
    """Join the torchrun group (or make a one-process group) on nccl for cuda, gloo otherwise."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # single process without torchrun
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if device_type == "cuda":
        # device_id binds the group to this rank's GPU: NCCL connects eagerly on it, and barriers and
        # object collectives need not guess the device from the rank
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))


def build_mesh(device_type: str, dims: ParallelDims) -> DeviceMesh:
    return init_device_mesh(device_type, (dims.dp, dims.tp), mesh_dim_names=("dp", "tp"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
