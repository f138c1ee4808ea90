"""The layout planner: for a model, a sequence length, a global batch and a cluster, every layout the
torch engine can run (tp, pp, cp, dp with FSDP2, activation checkpointing, micro-batch), with its
memory per GPU, pipeline bubble, communication and estimated step time and MFU, ranked.

It models what the trainer does without importing the trainer (pretrain/train): it reads the model's
config and FLOP count (pretrain/model) and judges a layout with the parallel package's own checks and
stage split (pretrain/parallel). ``python -m pretrain plan`` is its command line; bench/plan_check.py
checks the memory model against real runs.
"""
from pretrain.plan.configured import configured_layout, configured_workload
from pretrain.plan.cost import Cost, estimate_cost, step_flops
from pretrain.plan.hardware import GPUS, gpu_spec
from pretrain.plan.layout import Layout, Workload
from pretrain.plan.memory import Memory, estimate_memory, model_params, rank0_params
from pretrain.plan.search import Estimate, evaluate, evaluate_choosing_reduction, plan

__all__ = ["Cost", "Estimate", "GPUS", "Layout", "Memory", "Workload", "configured_layout", "configured_workload",
           "estimate_cost", "estimate_memory", "evaluate", "evaluate_choosing_reduction", "gpu_spec",
           "model_params", "plan", "rank0_params", "step_flops"]
