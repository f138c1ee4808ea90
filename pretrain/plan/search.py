"""Enumerate the layouts the trainer can run for a workload, estimate each, rank them.

Ranking: layouts that fit first, fastest estimated step first; then the rest, smallest memory first.
``reduce_every_microbatch`` is chosen when memory-bound: a layout that does not fit with FSDP2's
unsharded gradient accumulators is tried again reducing every micro-batch (without pipeline
parallelism: torch.distributed.pipelining's stages reduce after the last micro-batch themselves).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

from pretrain.plan.cost import Cost, estimate_cost, mfu
from pretrain.plan.layout import Layout, Workload, bubble, check, micro_batches
from pretrain.plan.memory import Memory, estimate_memory

MAX_MICRO_BATCH = 16
INTERLEAVED_VIRTUAL_STAGES = 2


@dataclass
class Estimate:
    layout: Layout
    memory: Memory
    cost: Cost
    fits: bool
    mfu: float
    micro_batches: int  # per optimizer step on one data-parallel rank
    bubble: float  # pipeline idle fraction

    def record(self) -> dict:
        """The JSON form (``plan --json``): layout fields, memory in GiB, time in seconds."""
        lay, cost = self.layout, self.cost
        return {**asdict(lay), "zero": lay.zero, "ac": lay.activation_checkpointing,
                "micro_batches": self.micro_batches, "memory_gib": self.memory.total / 2**30,
                "memory_breakdown_gib": self.memory.gib(), "fits": self.fits, "step_s": cost.step_s,
                "mfu": self.mfu, "bubble": self.bubble,
                "comm_gib_per_step": {dim: getattr(cost, f"{dim}_bytes") / 2**30 for dim in ("tp", "cp", "pp", "dp")},
                "time_s": {part: getattr(cost, f"{part}_s") for part in ("compute", "bubble", "tp", "cp", "pp")}
                | {"dp_exposed": cost.dp_exposed_s}}


def evaluate(w: Workload, lay: Layout) -> Estimate:
    problem = check(w, lay)
    if problem:
        raise ValueError(f"layout {lay} cannot run: {problem}")
    memory, cost = estimate_memory(w, lay), estimate_cost(w, lay)
    return Estimate(lay, memory, cost, fits=memory.total <= w.gpu.usable_gib * 2**30, mfu=mfu(w, cost.step_s),
                    micro_batches=micro_batches(w, lay), bubble=bubble(w, lay))


def evaluate_choosing_reduction(w: Workload, lay: Layout) -> Estimate:
    """``lay`` as is, or with reduce_every_microbatch if only that makes it fit."""
    estimate = evaluate(w, lay)
    if not estimate.fits and micro_batches(w, lay) > 1 and lay.pp == 1 and not lay.reduce_every_microbatch:
        reduced = evaluate(w, lay.replace(reduce_every_microbatch=True))
        if reduced.fits:
            return reduced
    return estimate


def candidate_layouts(w: Workload) -> Iterator[Layout]:
    """Every layout the trainer accepts: tp within a node (powers of two), pp and cp, dp the rest,
    micro-batches dividing the per-rank batch, FSDP full/grad_op, activation checkpointing on/off,
    1F1B or interleaved 1F1B; sequence parallel whenever tp > 1."""
    gpus = w.gpus
    for tp in _powers_of_two(min(gpus, w.gpu.gpus_per_node)):
        for pp in _divisors(gpus // tp):
            for cp in _powers_of_two(gpus // (tp * pp)):
                if pp > w.model.num_layers or gpus % (tp * pp * cp):
                    continue
                dp = gpus // (tp * pp * cp)
                per_rank = w.global_batch // dp if w.global_batch % dp == 0 else 0
                for micro_batch in (mb for mb in _divisors(per_rank) if mb <= MAX_MICRO_BATCH):
                    for schedule, virtual in (("1f1b", 1), ("interleaved_1f1b", INTERLEAVED_VIRTUAL_STAGES)):
                        if pp == 1 and schedule != "1f1b":
                            continue
                        for fsdp in ("full", "grad_op"):
                            for ac in (False, True):
                                lay = Layout(tp=tp, pp=pp, cp=cp, dp=dp, micro_batch=micro_batch, fsdp=fsdp,
                                             activation_checkpointing=ac, sequence_parallel=tp > 1,
                                             pp_schedule=schedule, pp_virtual_stages=virtual)
                                if check(w, lay) is None:
                                    yield lay


def plan(w: Workload) -> list[Estimate]:
    """Every candidate layout estimated and ranked (see the module docstring)."""
    estimates = [evaluate_choosing_reduction(w, lay) for lay in candidate_layouts(w)]
    return sorted(estimates, key=lambda e: (not e.fits, e.cost.step_s if e.fits else e.memory.total))


def _powers_of_two(limit: int) -> list[int]:
    return [2**i for i in range(limit.bit_length()) if 2**i <= limit]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0] if n > 0 else []
