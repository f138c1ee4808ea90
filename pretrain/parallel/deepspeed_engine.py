"""The deepspeed engine: ``deepspeed.initialize`` with ZeRO (stages 0-2 with TP, 0-3 without) and
DeepSpeed's own AutoTP, whose ``partition_config`` is derived from the same module names as the
DTensor plan (tp.py). DeepSpeed does not accept DTensor parameters, so the engines share the model
and the plan, not the parallelized module.

Differences from the torch engine, by DeepSpeed's design:
- AutoTP shards the q/k/v, gate/up (column) and o/down (row) linears; the embeddings and the head
  stay replicated (GLMModel reads ``lm_head.weight`` directly, which a replaced module would not
  intercept), so logits are full and the loss is the plain one.
- DeepSpeed averages gradients over data-parallel ranks; the loop's loss is already divided by the
  global Part-B count, so ``backward`` multiplies by dp to turn the average back into a sum.
- A step is skipped when the loss is not finite; the gradient norm is DeepSpeed's, measured while it
  steps (fp32 has no overflow check there).
- Checkpoints are DeepSpeed's own format inside our atomic step directory; they do not reshard
  (resume with the same tp and dp).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from pretrain.parallel.config import ParallelConfig
from pretrain.parallel.mesh import ParallelDims

_TAG = "engine"
# AutoTP layer specs from the architecture.md module names (regexes over parameter names).
PARTITION_CONFIG = {
    "use_default_specs": False,
    "layer_specs": [
        {"patterns": [r".*\.self_attn\.[qkv]_proj\.weight$", r".*\.mlp\.(gate|up)_proj\.weight$"],
         "partition_type": "column"},
        {"patterns": [r".*\.self_attn\.o_proj\.weight$", r".*\.mlp\.down_proj\.weight$"], "partition_type": "row"},
    ],
}


def deepspeed_config(parallel: ParallelConfig, dims: ParallelDims, micro_batch_size: int, accumulation_steps: int,
                     grad_clip: float, bf16: bool) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": parallel.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if dims.tp > 1:
        config["tensor_parallel"] = {"autotp_size": dims.tp, "partition_config": PARTITION_CONFIG}
    return config


class DeepSpeedEngine:
    name = "deepspeed"
    reshardable = False
    pipeline = None  # TP + ZeRO only: pp and cp are the torch engine's (ParallelConfig.validate)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict, dims: ParallelDims):
        """``config``: the DeepSpeed JSON config (``deepspeed_config``)."""
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from deepspeed.utils import groups
        self.dp = dims.dp
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config)
        self.model = self.engine  # forward, train() and eval() go through the engine
        if dims.tp > 1:  # the loader's dp rank comes from our (dp, tp) mesh: the groups must agree
            rank = torch.distributed.get_rank()
            if groups.get_tensor_model_parallel_rank() != rank % dims.tp:
                raise RuntimeError("DeepSpeed's tensor-parallel groups are not consecutive ranks; the data "
                                   "loader's data-parallel split would not match")

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        self.engine.backward(loss * self.dp, scale_wrt_gas=False)

    def step(self, lr: float, max_norm: float, skip: bool) -> float:
        if skip:
            self.engine.zero_grad()
            return math.nan
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return math.nan if norm is None else float(norm)

    def save(self, path: Path, async_group=None) -> None:  # synchronous: DeepSpeed writes its own pickles
        self.engine.save_checkpoint(str(path), tag=_TAG, save_latest=False)

    def load(self, path: Path) -> None:
        self.engine.load_checkpoint(str(path), tag=_TAG, load_lr_scheduler_states=False)
