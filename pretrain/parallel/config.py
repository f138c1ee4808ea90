"""``ParallelConfig``: the ``parallel`` section of a run config (engine and mesh sizes)."""
from __future__ import annotations

import dataclasses
import typing



@dataclasses.dataclass
class ParallelConfig:
    # torch: DTensor TP + FSDP2; deepspeed: AutoTP + ZeRO (the [deepspeed] extra: pip install -e ".[deepspeed]")
    engine: typing.Literal["torch", "deepspeed"] = "torch"
    tp: int = 1  # tensor-parallel size; data-parallel size = world_size / (pp * cp * tp)
    sequence_parallel: bool = False  # shard norms/residual activations over the sequence within TP
    # FSDP2 over the data-parallel ranks: "full" reshards parameters after forward (ZeRO-3),
    # "grad_op" keeps them gathered until backward (ZeRO-2: more memory, fewer all-gathers).
    fsdp: typing.Literal["full", "grad_op"] = "full"  # torch engine
    # torch engine, gradient accumulation: reduce-scatter gradients after every micro-batch instead of
    # keeping unsharded fp32 gradients until the last one (less memory, one reduce-scatter per micro-batch)
    reduce_every_microbatch: bool = False
    zero_stage: int = 1  # deepspeed engine: ZeRO stage 0-3 (0-2 with tp > 1: AutoTP composes with those)
    pp: int = 1  # pipeline-parallel size (torch engine): the layers are split over pp ranks
    # torch.distributed.pipelining's schedules; interleaved_1f1b runs pp_virtual_stages stages per rank.
    # (Its zero-bubble schedules split the weight-gradient pass, which torch 2.13 does not compose with
    # FSDP2: measured wrong gradients, so they are not offered.)
    pp_schedule: typing.Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    pp_virtual_stages: int = 1  # stages per pipeline rank (2+ with interleaved_1f1b)
    pp_microbatches: int | None = None  # micro-batches per schedule run; null: all of a step's micro-batches
    # layers of each stage in order (pp * pp_virtual_stages entries); null: balanced, with the embedding
    # and the head each weighted as one layer (GLM-130B's 70 layers on 8 stages: 8, 9 x 6, 8)
    pp_layers_per_stage: list[int] | None = None
    cp: int = 1  # context-parallel size (torch engine): each row's sequence is split over cp ranks

    @property
    def pp_stages(self) -> int:
        return self.pp * self.pp_virtual_stages

    def validate(self) -> None:
        for name in ("tp", "pp", "cp", "pp_virtual_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
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
            for name in ("pp", "cp"):
                if getattr(self, name) > 1:
                    raise ValueError(f"{name}={getattr(self, name)}: the deepspeed engine has no "
                                     f"{'pipeline' if name == 'pp' else 'context'} parallelism here; use "
                                     f"parallel.engine=torch (torch.distributed.pipelining / GLM-mask context "
                                     f"parallel) or set {name}=1")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel needs tp > 1; set parallel.tp or sequence_parallel=false")
        if self.reduce_every_microbatch and self.pp > 1:
            raise ValueError("reduce_every_microbatch with pp > 1: torch.distributed.pipelining's stages reduce "
                             "gradients after the last micro-batch themselves; set reduce_every_microbatch=false")
        if self.pp_virtual_stages > 1 and self.pp_schedule != "interleaved_1f1b":
            raise ValueError(f"pp_virtual_stages={self.pp_virtual_stages} needs pp_schedule=interleaved_1f1b; "
                             f"{self.pp_schedule!r} runs one stage per rank")
        if self.pp_microbatches is not None and self.pp_microbatches < 1:
            raise ValueError(f"pp_microbatches={self.pp_microbatches} must be >= 1 (or null)")
        if self.pp_layers_per_stage is not None:
            if len(self.pp_layers_per_stage) != self.pp_stages or min(self.pp_layers_per_stage) < 0:
                raise ValueError(f"pp_layers_per_stage={self.pp_layers_per_stage} must hold pp x pp_virtual_stages"
                                 f" = {self.pp_stages} counts >= 0, one per stage")
