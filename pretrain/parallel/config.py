"""``ParallelConfig``: the ``parallel`` section of a run config (engine and mesh sizes)."""
from __future__ import annotations

import dataclasses
import typing


@dataclasses.dataclass
class ParallelConfig:
    engine: typing.Literal["torch", "deepspeed"] = "torch"
    tp: int = 1  # tensor-parallel size; data-parallel size = world_size / tp
    sequence_parallel: bool = False  # shard norms/residual activations over the sequence within TP
    # FSDP2 over the data-parallel ranks: "full" reshards parameters after forward (ZeRO-3),
    # "grad_op" keeps them gathered until backward (ZeRO-2: more memory, fewer all-gathers).
    fsdp: typing.Literal["full", "grad_op"] = "full"  # torch engine
    # torch engine, gradient accumulation: reduce-scatter gradients after every micro-batch instead of
    # keeping unsharded fp32 gradients until the last one (less memory, one reduce-scatter per micro-batch)
    reduce_every_microbatch: bool = False
    zero_stage: int = 1  # deepspeed engine: ZeRO stage 0-3 (0-2 with tp > 1: AutoTP composes with those)

    def validate(self) -> None:
        if self.tp < 1:
            raise ValueError(f"tp={self.tp} must be >= 1")
        if self.engine == "deepspeed":
            if not 0 <= self.zero_stage <= (2 if self.tp > 1 else 3):
                raise ValueError(f"zero_stage={self.zero_stage} with tp={self.tp}: DeepSpeed AutoTP composes with "
                                 f"ZeRO stages 0-2 (0-3 without TP); lower zero_stage or set tp=1")
            if self.sequence_parallel:
                raise ValueError("sequence_parallel is a torch-engine feature; set parallel.engine=torch or "
                                 "sequence_parallel=false")
            if self.reduce_every_microbatch:
                raise ValueError("reduce_every_microbatch is a torch-engine (FSDP2) option; DeepSpeed ZeRO-2/3 "
                                 "already reduce every micro-batch: set reduce_every_microbatch=false")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel needs tp > 1; set parallel.tp or sequence_parallel=false")
