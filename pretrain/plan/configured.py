"""The planner's view of a run config: the ``Workload`` and ``Layout`` that ``python -m pretrain train``
would run on ``gpus`` devices (the config's sections, read by attribute: plan/ does not import train/)."""
from __future__ import annotations

from pretrain.model.config import ModelConfig
from pretrain.plan.hardware import GPU
from pretrain.plan.layout import Layout, Workload


def configured_layout(cfg, gpus: int) -> Layout:
    """The layout of ``cfg.parallel`` / ``cfg.train`` on ``gpus`` ranks (dp = the rest)."""
    parallel, train = cfg.parallel, cfg.train
    pp, cp = parallel.pp, parallel.cp
    model_ranks = parallel.tp * pp * cp
    if gpus % model_ranks:
        raise ValueError(f"{gpus} GPUs are not divisible by tp x pp x cp = {model_ranks}; change --gpus or "
                         f"the config's parallel sizes")
    return Layout(tp=parallel.tp, pp=pp, cp=cp, dp=gpus // model_ranks, micro_batch=train.micro_batch_size,
                  fsdp=parallel.fsdp, activation_checkpointing=train.activation_checkpointing,
                  reduce_every_microbatch=parallel.reduce_every_microbatch,
                  sequence_parallel=parallel.sequence_parallel,
                  pp_schedule=parallel.pp_schedule, pp_virtual_stages=parallel.pp_virtual_stages,
                  pp_microbatches=parallel.pp_microbatches,
                  pp_layers_per_stage=tuple(parallel.pp_layers_per_stage) if parallel.pp_layers_per_stage else None)


def configured_workload(cfg, model: ModelConfig, gpus: int, gpu: GPU, cpu: bool = False) -> Workload:
    """``model``: the resolved ModelConfig (the config's model section with the tokenizer's vocabulary).
    ``cpu``: predict a CPU run (float32 compute, the sdpa backend) instead of the GPU's bf16."""
    return Workload(model=model, seq_len=cfg.train.seq_len, global_batch=cfg.train.global_batch_size, gpus=gpus,
                    gpu=gpu, compute_bytes=4 if cpu or cfg.train.dtype == "float32" else 2, cpu=cpu)
