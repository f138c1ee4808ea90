"""``python -m pretrain plan``: the parallel layouts a model can train with on a cluster, ranked.

    python -m pretrain plan --model glm-130b --gpus 768 --gpu a100-40gb --seq-len 2048 --global-batch 4224
    python -m pretrain plan --config configs/glm-130b.yaml --gpus 768 --gpu a100-40gb [--dry-run] [--json]

With --config the config's own layout is estimated first (the exit status is 1 if it does not fit)
and shown with its rank among the alternatives; --dry-run also builds rank 0's first-step setup on a
fake process group of --gpus ranks (pretrain/train/dry_run.py). The model behind the numbers and its
constants: pretrain/plan/ and docs/architecture.md ("The planner").
"""
from __future__ import annotations

import argparse
import dataclasses
import json


COLUMNS = ("rank", "tp", "pp", "cp", "dp", "zero", "ac", "mb", "µb/step", "schedule", "reduce/µb", "GiB",
           "params/grads/optim/act/in-flight/loss/work GiB", "fits", "bubble", "comm GiB tp/cp/pp/dp", "step s",
           "MFU")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pretrain.plan import GPUS
    parser.add_argument("--config", help="a run config (YAML): plan around its model, batch and layout")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides of --config")
    parser.add_argument("--model", help="a model preset (without --config), e.g. glm-130b")
    parser.add_argument("--seq-len", type=int, help="without --config")
    parser.add_argument("--global-batch", type=int, help="rows per optimizer step (without --config)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="GPU type (hardware table in pretrain/plan)")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's dense bf16 peak (e.g. 835 for H100 NVL)")
    parser.add_argument("--top", type=int, default=15, help="alternatives to show")
    parser.add_argument("--json", action="store_true", help="print the layouts as a JSON list instead of a table")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --config: build rank 0's setup on the meta device and a fake process group")


def main(args: argparse.Namespace) -> int:
    from pretrain.plan import Workload, configured_layout, configured_workload, evaluate, gpu_spec, plan
    gpu = gpu_spec(args.gpu)
    if args.peak_tflops:
        gpu = dataclasses.replace(gpu, peak_tflops=args.peak_tflops)
    configured, cfg = None, None
    if args.config:
        from pretrain.train.config import load_config
        from pretrain.train.dry_run import planning_model
        from pretrain.train.setup import validate_topology
        if args.model or args.seq_len or args.global_batch:
            raise ValueError("--model, --seq-len and --global-batch come from --config; give one or the other")
        cfg = load_config(args.config, args.overrides)
        validate_topology(cfg, args.gpus)
        workload = configured_workload(cfg, planning_model(cfg), args.gpus, gpu)
        configured = evaluate(workload, configured_layout(cfg, args.gpus))
    else:
        from pretrain.model.presets import model_config
        missing = [flag for flag, value in (("--model", args.model), ("--seq-len", args.seq_len),
                                            ("--global-batch", args.global_batch)) if value is None]
        if missing:
            raise ValueError(f"give --config, or {', '.join(missing)}")
        workload = Workload(model=model_config(args.model), seq_len=args.seq_len, global_batch=args.global_batch,
                            gpus=args.gpus, gpu=gpu)
    ranked = plan(workload)
    rank = _rank_of(configured, ranked) if configured else None
    if args.json:
        layouts = [{"rank": i + 1, **e.record()} for i, e in enumerate(ranked[:args.top])]
        if configured:
            layouts.insert(0, {"rank": rank, "configured": True, **configured.record()})
        print(json.dumps(layouts, indent=1))
    else:
        _print_table(workload, ranked[:args.top], configured, rank, len(ranked))
    if args.dry_run:
        if cfg is None:
            raise ValueError("--dry-run needs --config")
        _print_dry_run(cfg, args.gpus, configured, workload)
    return 0 if configured is None or configured.fits else 1


def _rank_of(configured, ranked) -> int:
    """1-based position the configured layout would take among the ranked ones."""
    key = (not configured.fits, configured.cost.step_s if configured.fits else configured.memory.total)
    return 1 + sum((not e.fits, e.cost.step_s if e.fits else e.memory.total) < key for e in ranked)


def _print_table(workload, estimates, configured, rank, total) -> None:
    w, gpu = workload, workload.gpu
    print(f"{w.model.num_layers} layers x {w.model.hidden_size} hidden, vocab {w.model.vocab_size}, seq {w.seq_len}, "
          f"global batch {w.global_batch}: {w.gpus} x {gpu.name} ({gpu.peak_tflops:g} TFLOP/s bf16, "
          f"{gpu.memory_gib:g} GiB of which {gpu.usable_gib:g} usable, NVLink {gpu.nvlink_gbs:g} GB/s, "
          f"IB {gpu.ib_gbs:g} GB/s per GPU)")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    if configured:
        print(_row("config", configured))
    for i, estimate in enumerate(estimates):
        print(_row(str(i + 1), estimate))
    print(f"\n{total} layouts evaluated; {sum(1 for _ in estimates)} shown." +
          (f" The config's layout ranks {rank} ({'fits' if configured.fits else 'does NOT fit'})." if configured else ""))


def _row(label: str, e) -> str:
    lay, mem, cost = e.layout, e.memory.gib(), e.cost
    breakdown = "/".join(f"{mem[k]:.1f}" for k in ("params", "grads", "optimizer", "activations", "in_flight",
                                                     "loss", "workspace"))
    comm = "/".join(f"{getattr(cost, f'{d}_bytes') / 2**30:.0f}" for d in ("tp", "cp", "pp", "dp"))
    schedule = f"{lay.pp_schedule}" + (f" v{lay.pp_virtual_stages}" if lay.pp_schedule == "interleaved_1f1b" else "")
    cells = (label, lay.tp, lay.pp, lay.cp, lay.dp, lay.zero, "on" if lay.activation_checkpointing else "off",
             lay.micro_batch, e.micro_batches, schedule if lay.pp > 1 else "-",
             "yes" if lay.reduce_every_microbatch else "no", f"{mem['total']:.1f}", breakdown,
             "yes" if e.fits else "NO", f"{e.bubble:.1%}", comm, f"{cost.step_s:.2f}", f"{e.mfu:.1%}")
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _print_dry_run(cfg, gpus: int, configured, workload) -> None:
    from pretrain.plan import rank0_params
    from pretrain.train.dry_run import dry_run
    result = dry_run(cfg, gpus)
    predicted = rank0_params(workload, configured.layout)
    print(f"\ndry run ({result.engine} engine, meta device, fake process group of {gpus} ranks): mesh "
          f"{result.mesh_shape}, {result.total_params / 1e9:.2f}B parameters, rank 0 holds "
          f"{result.local_params / 1e6:.1f}M (planner: {predicted / 1e6:.1f}M)")
