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
from pretrain.parallel.config import ParallelConfig
from pretrain.parallel.context import check_context
from pretrain.parallel.pipeline import check_pipeline, stage_layer_counts
from pretrain.parallel.tp import check_tp_divisibility
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

    def parallel(self) -> ParallelConfig:
        """The ``parallel`` section of a run config with this layout (the trainer's rules judge it)."""
        return ParallelConfig(tp=self.tp, pp=self.pp, cp=self.cp, fsdp=self.fsdp,
                              sequence_parallel=self.sequence_parallel,
                              reduce_every_microbatch=self.reduce_every_microbatch, pp_schedule=self.pp_schedule,
                              pp_virtual_stages=self.pp_virtual_stages, pp_microbatches=self.pp_microbatches,
                              pp_layers_per_stage=list(self.pp_layers_per_stage) if self.pp_layers_per_stage else None)

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
    """Blocks of each pipeline stage (pp x virtual stages), as the trainer splits them (pipeline.py:
    parallel.pp_layers_per_stage, else balanced with the embedding and head weighted as one layer each;
    GLM-130B's 70 layers on 8: 8, 9 x 6, 8). ValueError when no stage split exists."""
    return stage_layer_counts(lay.parallel(), w.model.num_layers) if lay.pp > 1 else [w.model.num_layers]


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
    """Why the trainer could not run ``lay`` for ``w`` (None when it can): the trainer's own checks of
    the parallel section, TP divisibility, context and pipeline, plus what the planner adds."""
    cfg = w.model
    if lay.world != w.gpus:
        return f"tp x pp x cp x dp = {lay.world} != {w.gpus} GPUs"
    if w.global_batch % (lay.dp * lay.micro_batch):
        return f"global batch {w.global_batch} is not divisible by dp x micro_batch = {lay.dp * lay.micro_batch}"
    if lay.pp_schedule not in SCHEDULES:
        return f"pp_schedule={lay.pp_schedule!r}: the planner models {list(SCHEDULES)}"
    parallel = lay.parallel()
    try:
        parallel.validate()
        check_tp_divisibility(cfg.num_heads, cfg.num_kv_heads, cfg.ffn_hidden_size, cfg.vocab_size, w.seq_len,
                              lay.tp, lay.sequence_parallel)
        check_context(parallel, w.seq_len, cfg.attention_backend, cfg.attention_dropout)
        check_pipeline(parallel, cfg.num_layers, micro_batches(w, lay))
    except ValueError as error:
        return str(error)
    return None
