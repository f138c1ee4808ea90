"""Accelerator specs for the planner: dense bf16 peak, memory, and per-GPU link bandwidths.

Numbers are NVIDIA's datasheet values for the SXM parts in 8-GPU HGX/DGX nodes:
- memory: GiB as torch.cuda reports total_memory (a "40 GB" A100 has 39.4 GiB).
- peak: dense bf16 tensor-core TFLOP/s without sparsity (A100 312; H100/H200 SXM 989 — the H100/H200
  NVL parts are 835, PCIe H100 756; pass --peak-tflops for those).
- nvlink: per GPU, per direction (A100 NVLink 3: 12 links x 25 GB/s = 300 GB/s; H100/H200 NVLink 4:
  18 links x 25 GB/s = 450 GB/s), through NVSwitch to any GPU of the node.
- ib: inter-node bandwidth per GPU, per direction: one InfiniBand HCA per GPU (DGX A100: 8x HDR 200 Gb/s
  = 25 GB/s; DGX H100/H200: 8x NDR 400 Gb/s = 50 GB/s).
A collective achieves ``LINK_EFFICIENCY`` of the link (NCCL bus bandwidth), and matmuls
``MATMUL_EFFICIENCY`` of the peak: the planner's times are estimates, not measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

MATMUL_EFFICIENCY = 0.75  # large bf16 GEMMs reach ~70-80% of the dense peak on A100/H100
LINK_EFFICIENCY = 0.8  # NCCL bus bandwidth vs the link's nominal bandwidth
# What the CUDA context, NCCL buffers and allocator fragmentation take from a GPU's memory before the
# trainer's tensors: a layout "fits" if its predicted peak stays below capacity minus this.
RESERVED_GIB = 2.5


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float  # dense bf16
    memory_gib: float
    nvlink_gbs: float  # GB/s per GPU per direction inside a node
    ib_gbs: float  # GB/s per GPU per direction between nodes
    gpus_per_node: int = 8

    @property
    def usable_gib(self) -> float:
        return self.memory_gib - RESERVED_GIB


GPUS = {gpu.name: gpu for gpu in (
    GPU("a100-40gb", peak_tflops=312.0, memory_gib=39.4, nvlink_gbs=300.0, ib_gbs=25.0),
    GPU("a100-80gb", peak_tflops=312.0, memory_gib=79.2, nvlink_gbs=300.0, ib_gbs=25.0),
    GPU("h100", peak_tflops=989.0, memory_gib=79.6, nvlink_gbs=450.0, ib_gbs=50.0),  # H100 SXM 80 GB
    GPU("h200", peak_tflops=989.0, memory_gib=140.4, nvlink_gbs=450.0, ib_gbs=50.0),  # H200 SXM 141 GB
)}


def gpu_spec(name: str) -> GPU:
    if name not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; choose one of {sorted(GPUS)}")
    return GPUS[name]
