"""The process group and the (pp, dp, cp, tp) device mesh, from the torchrun environment.

Without torchrun (plain ``python -m pretrain train``) this is a one-process group, so the rest of the
trainer has a single code path. Ranks that share a ``dp`` coordinate see the same rows: pipeline stages
(pp) split the layers, context parallelism (cp) each row's sequence, tensor parallelism (tp) the
matrices. tp is the innermost dimension so that TP stays inside a node, pp the outermost (its
point-to-point traffic is the lightest). Dimensions of size 1 are kept, so every name always exists.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


MESH_DIMS = ("pp", "dp", "cp", "tp")


@dataclass
class ParallelDims:
    world_size: int
    tp: int
    pp: int = 1
    cp: int = 1

    @property
    def dp(self) -> int:
        return self.world_size // (self.pp * self.cp * self.tp)

    def validate(self) -> None:
        model_ranks = self.pp * self.cp * self.tp
        if self.world_size % model_ranks:
            sizes = " x ".join(f"parallel.{name}={size}" for name, size in
                               (("pp", self.pp), ("cp", self.cp), ("tp", self.tp)) if size > 1)
            raise ValueError(f"world size {self.world_size} is not divisible by {sizes}"
                             f"{f' = {model_ranks}' if ' x ' in sizes else ''}; launch a multiple of {model_ranks} "
                             f"processes or change those sizes")


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
    """The (pp, dp, cp, tp) mesh, with its flattened dimensions created (collectively) up front."""
    mesh = init_device_mesh(device_type, (dims.pp, dims.dp, dims.cp, dims.tp), mesh_dim_names=MESH_DIMS)
    param_mesh(mesh)
    loss_mesh(mesh)
    return mesh


def param_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The ranks that hold the same parameters: FSDP shards and reduces over them (cp ranks compute the
    gradients of different tokens, so they sum like data-parallel ranks; torchtitan's dp_shard_cp)."""
    return mesh["dp", "cp"]._flatten("dp_cp")


def loss_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The ranks whose loss terms add up to the step's loss (tp ranks repeat theirs)."""
    return mesh["pp", "dp", "cp"]._flatten("pp_dp_cp")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
