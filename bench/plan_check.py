"""The planner's memory model against real runs: peak memory of the trainer's first two steps on CPU
(tiny models, several layouts), measured and predicted (pretrain.plan.estimate_memory).

    .venv/bin/python bench/plan_check.py                                  # the one-process layouts
    .venv/bin/torchrun --nproc_per_node=2 bench/plan_check.py             # the two-process layouts
    ... --layouts act_tp2 --json                                          # one, as a JSON line

Measure one layout per launch for numbers to trust: layouts run one after another in one process see
each other's heap (up to 30% off); several per launch is a quick look.

"Peak memory" on CPU: the rise of the process's peak resident set (Linux VmHWM, reset through
/proc/self/clear_refs) over its resident set just before the trainer is built, to the end of step 2
(the first with optimizer state); the largest rank's rise counts. glibc is told to map every
allocation of 64 KiB or more on its own (MALLOC_MMAP_THRESHOLD_=65536; the script re-executes itself
with it) so that a freed tensor leaves the resident set at once, as it leaves a GPU's allocated
bytes. One unmeasured warm-up run first loads what Python and torch load lazily. (torch.profiler's
allocator events would be exact for tensors, but frees that happen on gloo's threads are not
recorded, so its running total drifts upward with every step of a multi-process run.)
The prediction is the planner's for the same model, layout and float32 compute (Workload.cpu).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from pathlib import Path

import sys

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
MMAP_THRESHOLD = 65536
MODELS = {
    # activations dominate: GLM-1 block (LayerNorm, GeLU, learned 2-D positions, tied head)
    "act": ["model.num_layers=4", "model.hidden_size=128", "model.num_heads=4", "model.ffn_hidden_size=512",
            "train.seq_len=256", "train.micro_batch_size=4", "train.global_batch_size=8"],
    # parameters, gradients and optimizer state dominate
    "param": ["model.num_layers=2", "model.hidden_size=512", "model.num_heads=8", "model.ffn_hidden_size=2048",
              "train.seq_len=64", "train.micro_batch_size=2", "train.global_batch_size=4"],
    # GLM-4 block: RMSNorm, SwiGLU, GQA (4 query / 2 KV heads), RoPE, untied head
    "glm4": ["model.num_layers=4", "model.hidden_size=128", "model.num_heads=4", "model.num_kv_heads=2",
             "model.ffn_hidden_size=384", "model.norm=rmsnorm", "model.mlp=swiglu", "model.position_encoding=rope_1d",
             "model.partial_rotary_factor=0.5", "model.tie_embeddings=false", "model.bias=false",
             "train.seq_len=256", "train.micro_batch_size=4", "train.global_batch_size=8"],
}
# name: (processes, model, overrides). Every run accumulates 2 micro-batches per rank unless it says otherwise.
LAYOUTS = {
    "act": (1, "act", []),
    "act_ac": (1, "act", ["train.activation_checkpointing=true"]),
    "act_reduce_every": (1, "act", ["parallel.reduce_every_microbatch=true"]),
    "param": (1, "param", []),
    "glm4": (1, "glm4", []),
    "glm4_ac": (1, "glm4", ["train.activation_checkpointing=true"]),
    "act_tp2": (2, "act", ["parallel.tp=2"]),
    "act_tp2_sp": (2, "act", ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "act_dp2": (2, "act", ["train.micro_batch_size=2"]),
    "act_dp2_grad_op_ac": (2, "act", ["train.micro_batch_size=2", "parallel.fsdp=grad_op",
                                      "train.activation_checkpointing=true"]),
    "param_dp2": (2, "param", ["train.micro_batch_size=1"]),
    "param_dp2_grad_op_one_microbatch": (2, "param", ["parallel.fsdp=grad_op"]),
    "glm4_tp2_ac": (2, "glm4", ["parallel.tp=2", "train.activation_checkpointing=true"]),
    # pipeline and context parallelism
    "act_pp2": (2, "act", ["parallel.tp=1", "parallel.pp=2", "parallel.pp_schedule=1f1b"]),
    "act_pp2_interleaved": (2, "act", ["parallel.tp=1", "parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b",
                                       "parallel.pp_virtual_stages=2", "parallel.pp_layers_per_stage=[1,1,1,1]",
                                       "train.micro_batch_size=2"]),
    "act_cp2": (2, "act", ["parallel.tp=1", "parallel.cp=2"]),
}


def base_overrides(cache_dir: Path) -> list[str]:
    return ["model.preset=glm-tiny", "parallel.tp=1", "eval.interval=0", "metrics.tensorboard=false",
            "data.corpus=embedded", f"data.cache_dir={cache_dir}", "data.num_workers=0", "checkpoint.resume_from=none"]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


def measure(name: str, cache_dir: Path) -> dict:
    """Run two trainer steps of layout ``name`` in this process group; the peak and the prediction."""
    from pretrain.plan import configured_layout, configured_workload, estimate_memory, gpu_spec
    from pretrain.train.config import load_config
    from pretrain.train.loop import Trainer
    _, model, overrides = LAYOUTS[name]
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(ROOT / "configs" / "smoke.yaml",
                          [*base_overrides(cache_dir), *MODELS[model], *overrides, f"run.dir={run_dir}"])
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
        before = _status_bytes("VmRSS")
        trainer = Trainer(cfg)
        batches = iter(trainer.s.loader)
        for _ in range(2):
            trainer.train_step(batches)
        peak = torch.tensor([float(_status_bytes("VmHWM") - before)])
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        world = dist.get_world_size()
        workload = configured_workload(cfg, trainer.s.model_cfg, world, gpu_spec("h100"), cpu=True)
        predicted = estimate_memory(workload, configured_layout(cfg, world))
        del trainer, batches
        gc.collect()
    measured = peak.item()
    return {"layout": name, "processes": world, "measured_mib": measured / 2**20,
            "predicted_mib": predicted.total / 2**20, "error": predicted.total / measured - 1,
            "breakdown_mib": {k: round(v * 1024, 2) for k, v in predicted.gib().items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", help=f"default: those for this world size; any of {list(LAYOUTS)}")
    parser.add_argument("--cache-dir", default=str(ROOT / "runs" / "_data"), help="embedded corpus cache")
    parser.add_argument("--json", action="store_true", help="one JSON object per layout")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # read by glibc at start: start again
        os.execv(sys.executable, [sys.executable, *sys.argv])
    from pretrain.data.corpus import prepare_embedded_corpus
    from pretrain.parallel.mesh import init_distributed
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    names = args.layouts or [name for name, (procs, _, _) in LAYOUTS.items() if procs == world]
    wrong = [name for name in names if name not in LAYOUTS or LAYOUTS[name][0] != world]
    if wrong:
        raise SystemExit(f"layouts {wrong} are unknown or need another number of processes than {world}")
    cache_dir = Path(args.cache_dir)
    prepare_embedded_corpus(cache_dir)
    init_distributed("cpu")
    rank0 = dist.get_rank() == 0
    if rank0 and not args.json:
        print("| layout | processes | measured MiB | predicted MiB | error |\n|---|---|---|---|---|")
    measure(names[0], cache_dir)  # warm-up: lazily loaded modules and libraries
    for name in names:
        result = measure(name, cache_dir)
        if rank0:
            print(json.dumps(result) if args.json else
                  f"| {name} | {world} | {result['measured_mib']:.1f} | {result['predicted_mib']:.1f} | "
                  f"{result['error']:+.1%} |", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
