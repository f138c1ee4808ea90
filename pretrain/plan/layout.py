"""What the planner reasons about: a ``Workload`` (model, sequence, batch, cluster) and a ``Layout``
(how the torch engine spreads it), plus the facts both derive (micro-batches, stage sizes, groups).

The mesh is (pp, dp, cp, tp) with tp innermost, as the trainer builds it: consecutive ranks form a
TP group, so a group whose ranks span at most one node talks over NVLink and any other over
InfiniBand. FSDP2 shards parameters over dp x cp (context-parallel ranks hold the same weights,
as torchtitan's ``dp_shard_cp``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pretrain.model.config import ModelConfig
from pretrain.parallel.pipeline import layers_per_stage
from pretrain.plan.hardware import GPU

# Pipeline schedules the planner models: bubble fraction and in-flight micro-batches on the first stage
# (Narayanan et al. 2021, "Efficient large-scale language model training on GPU clusters", §2.2).
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


@dataclass(frozen=True)
class Workload:
    model: ModelConfig
    seq_len: int
    global_batch: int  # rows per optimizer step
    gpus: int
    gpu: GPU
    # bytes of the compute copies (FSDP2 param_dtype) and activations: bf16 on GPU; 4 for the CPU runs
    # that check the memory model (float32, and the sdpa backend repeats GQA's K/V heads there)
    compute_bytes: int = 2
    cpu: bool = False
    # fp32 logits of one loss chunk (pretrain/train/loss.py LOGITS_CHUNK_BYTES; a test keeps them equal)
    loss_chunk_bytes: int = 256 * 2**20
    min_chunk_tokens: int = 64

    @property
    def tokens(self) -> int:
        return self.global_batch * self.seq_len


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    cp: int
    dp: int
    micro_batch: int
    fsdp: str = "full"  # FSDP2 "full" (ZeRO-3: reshard after forward) or "grad_op" (ZeRO-2-like)
    activation_checkpointing: bool = False
    reduce_every_microbatch: bool = False
    sequence_parallel: bool = False
    pp_schedule: str = "1f1b"
    pp_virtual_stages: int = 1
    pp_microbatches: int | None = None  # micro-batches per schedule round; None: all of the step's
    pp_layers_per_stage: tuple[int, ...] | None = None  # None: the trainer's balanced split

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def zero(self) -> int:
        return 3 if self.fsdp == "full" else 2

    @property
    def fsdp_ranks(self) -> int:
        return self.dp * self.cp

    def replace(self, **changes) -> "Layout":
        return dataclasses.replace(self, **changes)


def micro_batches(w: Workload, lay: Layout) -> int:
    """Micro-batches per optimizer step on one data-parallel rank."""
    return w.global_batch // (lay.dp * lay.micro_batch)


def round_microbatches(w: Workload, lay: Layout) -> int:
    """Micro-batches per pipeline schedule round (each round pays a bubble)."""
    return lay.pp_microbatches or micro_batches(w, lay)


def stage_counts(w: Workload, lay: Layout) -> list[int]:
    """Blocks of each pipeline stage (pp x virtual stages), as the trainer splits them: the config's
    parallel.pp_layers_per_stage, else pipeline.py's balanced split (embedding and head weighted as one
    layer each; GLM-130B's 70 layers on 8: 8, 9 x 6, 8). ValueError when no stage split exists."""
    stages = lay.pp * (lay.pp_virtual_stages if lay.pp_schedule == "interleaved_1f1b" else 1)
    if lay.pp_layers_per_stage:
        return list(lay.pp_layers_per_stage)
    if stages == 1:
        return [w.model.num_layers]
    return layers_per_stage(w.model.num_layers, stages)


def rank_layers(w: Workload, lay: Layout) -> list[int]:
    """Blocks on each pipeline rank: rank r runs stages r, r + pp, ... (looped placement)."""
    counts = stage_counts(w, lay)
    return [sum(counts[rank::lay.pp]) for rank in range(lay.pp)]


def in_flight_on(w: Workload, lay: Layout, rank: int) -> float:
    """Micro-batches whose activations pipeline rank ``rank`` holds at once (1F1B: pp - rank)."""
    if lay.pp_schedule == "1f1b" and lay.pp > 1:
        return float(min(round_microbatches(w, lay), lay.pp - rank))
    return in_flight(w, lay)


def in_flight(w: Workload, lay: Layout) -> float:
    """Micro-batches whose activations the first stage holds at once."""
    m, p, v = round_microbatches(w, lay), lay.pp, lay.pp_virtual_stages
    if p == 1:
        return 1.0
    if lay.pp_schedule == "gpipe":
        return float(m)
    if lay.pp_schedule == "interleaved_1f1b":
        return min(m, p) * (1 + (p - 1) / (p * v))
    return float(min(m, p))


def bubble(w: Workload, lay: Layout) -> float:
    """Idle fraction of a pipeline round relative to its compute: (pp - 1) / (micro-batches x virtual stages)."""
    if lay.pp == 1:
        return 0.0
    virtual = lay.pp_virtual_stages if lay.pp_schedule == "interleaved_1f1b" else 1
    return (lay.pp - 1) / (round_microbatches(w, lay) * virtual)


def group_stride(lay: Layout, dim: str) -> int:
    """Rank distance between neighbours of a mesh dimension (mesh order pp, dp, cp, tp); "fsdp" is the
    flattened (dp, cp) group FSDP2 shards over."""
    return {"tp": 1, "cp": lay.tp, "fsdp": lay.tp, "dp": lay.tp * lay.cp, "pp": lay.tp * lay.cp * lay.dp}[dim]


def inside_node(w: Workload, lay: Layout, dim: str, size: int) -> bool:
    return group_stride(lay, dim) * size <= w.gpu.gpus_per_node


def check(w: Workload, lay: Layout) -> str | None:
    """Why the trainer could not run ``lay`` for ``w`` (None when it can)."""
    cfg = w.model
    if lay.world != w.gpus:
        return f"tp x pp x cp x dp = {lay.world} != {w.gpus} GPUs"
    for name, value in (("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads),
                        ("ffn_hidden_size", cfg.ffn_hidden_size), ("vocab_size", cfg.vocab_size)):
        if value % lay.tp:
            return f"model.{name}={value} is not divisible by tp={lay.tp}"
    if lay.sequence_parallel and (lay.tp == 1 or (w.seq_len // lay.cp) % lay.tp):
        return f"sequence parallel needs tp > 1 dividing the local sequence {w.seq_len // lay.cp}"
    if w.seq_len % (2 * lay.cp) and lay.cp > 1:
        return f"seq_len={w.seq_len} is not divisible by 2 x cp={2 * lay.cp} (load-balanced chunks)"
    if w.global_batch % (lay.dp * lay.micro_batch):
        return f"global batch {w.global_batch} is not divisible by dp x micro_batch = {lay.dp * lay.micro_batch}"
    if lay.pp > cfg.num_layers:
        return f"pp={lay.pp} exceeds num_layers={cfg.num_layers}"
    if lay.pp_schedule not in SCHEDULES:
        return f"pp_schedule={lay.pp_schedule!r}: the planner models {list(SCHEDULES)}"
    if lay.reduce_every_microbatch and lay.pp > 1:
        return "reduce_every_microbatch with pp > 1: the pipeline stages reduce gradients after the last micro-batch"
    if lay.pp > 1:
        try:
            counts = stage_counts(w, lay)
        except ValueError as error:
            return str(error)
        if len(counts) != lay.pp * (lay.pp_virtual_stages if lay.pp_schedule == "interleaved_1f1b" else 1) \
                or sum(counts) != cfg.num_layers or min(counts) < 1:
            return f"the {len(counts)} stages cannot split {cfg.num_layers} layers as {counts}"
        m = round_microbatches(w, lay)
        if micro_batches(w, lay) % m:
            return f"pp_microbatches={m} does not divide the {micro_batches(w, lay)} micro-batches of a step"
        if lay.pp_schedule == "interleaved_1f1b" and (m % lay.pp or cfg.num_layers < lay.pp * lay.pp_virtual_stages):
            return (f"interleaved_1f1b needs micro-batches per round ({m}) divisible by pp={lay.pp} and "
                    f"num_layers >= pp x virtual stages")
    return None
