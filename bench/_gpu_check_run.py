"""gpu_check's trainer_run: the real trainer (pretrain.train.loop.Trainer, in this process) on a scaled-down
GLM-4-shaped model: 12 steps with an evaluation, a checkpoint at step 10, then a second trainer resumed
from that checkpoint alone, which must reproduce steps 11-12 exactly. Throughput, MFU and peak memory come
from the run's own metrics; host syncs are counted under torch.cuda.set_sync_debug_mode("warn")."""
from __future__ import annotations

import collections
import contextlib
import json
import shutil
import statistics
import warnings
from pathlib import Path

import torch
import yaml

STEPS, CHECKPOINT_AT = 12, 10


def run_config(ctx, run_dir: Path) -> dict:
    # GLM-4 architecture (partial RoPE, GQA, SwiGLU, RMSNorm, untied head) at hidden 1024 / 8 layers
    gpu = not ctx.dry
    model = {"preset": "glm-4-9b", "hidden_size": 1024 if gpu else 64, "num_layers": 8 if gpu else 2,
             "num_heads": 8 if gpu else 4, "num_kv_heads": 2, "head_dim": 128 if gpu else 16,
             "ffn_hidden_size": 3456 if gpu else 128, "max_position_embeddings": 2048 if gpu else 128}
    return {
        "model": model,
        "objective": {"strategy": "glm-130b"},
        "data": {"corpus": "embedded", "cache_dir": str(ctx.data_cache), "num_workers": 2 if gpu else 0},
        "train": {"max_steps": STEPS, "global_batch_size": 8 if gpu else 4, "micro_batch_size": 4 if gpu else 2,
                  "seq_len": model["max_position_embeddings"], "lr": 3e-4, "warmup_steps": 2,
                  "activation_checkpointing": True, "compile": gpu, "init_device": "meta"},
        "checkpoint": {"interval": CHECKPOINT_AT, "keep": 2},
        "eval": {"interval": STEPS // 2, "batches": 1},
        "metrics": {"log_interval": 1, "tensorboard": False},
        "run": {"dir": str(run_dir)},
    }


def train(ctx, run_dir: Path) -> tuple[list[dict], collections.Counter]:
    """Train (or resume) ``run_dir`` to STEPS; returns its metrics records and the host syncs by call site."""
    from pretrain.train.config import load_config
    from pretrain.train.loop import Trainer
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(run_config(ctx, run_dir), sort_keys=False), encoding="utf-8")
    trainer = Trainer(load_config(run_dir / "run.yaml"))
    syncs = collections.Counter()
    with _counting_syncs(ctx.device, syncs):
        trainer.train()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return records, syncs


@contextlib.contextmanager
def _counting_syncs(device: torch.device, syncs: collections.Counter):
    """CUDA: every synchronizing call (a host sync stalls the launch queue) counted by file:line."""
    if device.type != "cuda":
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for warning in caught:
        if "synchroniz" in str(warning.message):
            syncs[f"{Path(warning.filename).name}:{warning.lineno}"] += 1


def check_trainer_run(ctx) -> dict:
    import torch.distributed as dist
    from pretrain.train.checkpoint import step_dir
    root = ctx.out / "trainer_run"
    shutil.rmtree(root, ignore_errors=True)
    first, syncs = train(ctx, root / "first")
    saved = step_dir(root / "first" / "checkpoints", CHECKPOINT_AT)
    shutil.copytree(saved, step_dir(root / "resumed" / "checkpoints", CHECKPOINT_AT))
    resumed, _ = train(ctx, root / "resumed")
    if dist.is_initialized():
        dist.destroy_process_group()

    by_step = {r["step"]: r for r in first}
    steps = [r for r in first if r["step"] > 2]  # past compilation and warm-up
    compare = [(r["step"], r["loss"], by_step[r["step"]]["loss"]) for r in resumed]
    max_diff = max(abs(a - b) for _, a, b in compare) if compare else float("inf")
    evals = [r["eval/loss"] for r in first if "eval/loss" in r]
    problems = []
    if [r["step"] for r in first] != list(range(1, STEPS + 1)) or not all(map(_finite, (r["loss"] for r in first))):
        problems.append("the first run did not log 12 finite losses")
    if [s for s, _, _ in compare] != list(range(CHECKPOINT_AT + 1, STEPS + 1)) or max_diff != 0.0:
        problems.append(f"resume from step {CHECKPOINT_AT} is not exact: {compare}")
    if not evals:
        problems.append("no evaluation ran")
    mfu = [r["mfu"] for r in steps if r.get("mfu") is not None]
    numbers = {
        "model": "GLM-4 arch, hidden {hidden_size}, {num_layers} layers, heads {num_heads}:{num_kv_heads}, "
                 "head_dim {head_dim}, ffn {ffn_hidden_size}".format(**run_config(ctx, root)["model"]),
        "seq_len": run_config(ctx, root)["train"]["seq_len"],
        "compile": run_config(ctx, root)["train"]["compile"],
        "tokens_per_s (median, steps 3-12)": round(statistics.median(r["tokens_per_s"] for r in steps)),
        "tflops_per_device (median)": float(f"{statistics.median(r['tflops'] for r in steps):.3g}"),
        "mfu (median)": round(statistics.median(mfu), 4) if mfu else None,
        "peak_memory_gib": round(max(r["max_memory_gib"] for r in first), 2),
        "eval_losses": evals, "first_loss": first[0]["loss"], "last_loss": first[-1]["loss"],
        "resume_max_abs_loss_diff": max_diff,
        "host_syncs_per_step": round(sum(syncs.values()) / STEPS, 1) if ctx.device.type == "cuda" else None,
    }
    rows = [{"call site": site, "syncs": count} for site, count in syncs.most_common(10)]
    note = "" if ctx.device.type == "cuda" else "CPU: no compile (inductor's C++ build takes minutes), no sync count"
    return {"status": "fail" if problems else "pass", "reason": "; ".join(problems) or note, "numbers": numbers,
            "rows": rows}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
