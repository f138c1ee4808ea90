"""Rank-0 metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard scalars, optional
Weights & Biases (``metrics.wandb``), a console progress line (tokens seen, throughput, ETA); and the
PaLM model-FLOPs utilisation.

MFU = model FLOPs per token (pretrain.model.flops, PaLM: 6N + 12·L·H·D·P, no causal halving) ×
tokens/s per device / the device's dense bf16 peak. P is each batch's real attention work: the
average number of keys a query may see under its mask (GLM's Part A is bidirectional, Part B
causal), so a GLM batch and a causal batch are charged for what they really compute.
"""
from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ConfigError
from pretrain.train.config import WandbConfig

logger = logging.getLogger(__name__)

# Dense bf16 TFLOP/s, no sparsity (NVIDIA datasheets; reference-frameworks.md §2.1). The NVL and PCIe
# cards run at lower clocks and power than the SXM parts whose bare names they contain.
PEAK_TFLOPS = {"H200 NVL": 835.0, "H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """Per-device peak for MFU: the override, else the GPU's from the table, else None (CPU, unknown GPU)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    return peak_tflops_of(torch.cuda.get_device_name(device))


def peak_tflops_of(device_name: str) -> float | None:
    """The table's entry for a CUDA device name ("NVIDIA H200 NVL"): the longest key it contains, so
    "H200 NVL" wins over "H200"."""
    keys = [key for key in PEAK_TFLOPS if key in device_name]
    return PEAK_TFLOPS[max(keys, key=len)] if keys else None


def max_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsWriter:
    """Writes on rank 0 only (``enabled``); every method is a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int,
                 wandb: WandbConfig | None = None, run_config: dict | None = None):
        self.enabled = enabled
        self.jsonl_path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        if wandb is not None and wandb.enabled:
            self.wandb = WandbWriter(wandb, run_dir, run_config or {})
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.jsonl_path, resume_step)  # steps after the checkpoint are re-run
        self.jsonl = self.jsonl_path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step hides events of steps > resume_step that a killed run wrote after its checkpoint
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in _scalars(record):
                self.tb.add_scalar(key, value, record["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(record)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.close()


class WandbWriter:
    """Every record's scalars to Weights & Biases, files under ``<run.dir>/wandb``. The W&B run id is kept
    in ``<run.dir>/wandb/run_id``, so a resumed run continues the same W&B run; W&B keeps the first
    values of steps that a killed run logged after its last checkpoint (it refuses steps going back)."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, run_config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("metrics.wandb.enabled=true needs the wandb package: pip install wandb (it is in "
                              "the [dev] extra), or set metrics.wandb.enabled=false") from None
        id_file = run_dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12], encoding="utf-8")
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.resolve().name,
                              mode=cfg.mode, dir=str(run_dir), id=id_file.read_text(encoding="utf-8").strip(),
                              resume="allow", config=run_config)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(dict(_scalars(record)), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class ETA:
    """Seconds left at the pace of this process's steps so far, evaluations and checkpoints included.
    The pace is measured from the end of the first step (which carries compilation and warm-up)."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.first: tuple[int, float] | None = None  # (step, time) after the first step of this process

    def __call__(self, step: int) -> float | None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        first_step, first_time = self.first
        if step == first_step:
            return None
        return (now - first_time) / (step - first_step) * (self.max_steps - step)


def console_line(record: dict[str, Any], max_steps: int) -> str:
    """``step 120/1000 12% | loss 5.2 (token 5.1, ...) | ... | 1.23M tok/s | 157M tok | eta 1h02m``."""
    step = record["step"]
    parts = [f"step {step}/{max_steps} {step / max_steps:.0%}"]
    if "loss" in record:
        per_strategy = ", ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("loss/"))
        parts.append(f"loss {record['loss']:.4f}" + (f" ({per_strategy})" if per_strategy else ""))
    if "eval/loss" in record:
        parts.append(f"eval loss {record['eval/loss']:.4f}")
    if "eval/cloze_acc" in record:  # eval.downstream
        parts.append(f"cloze acc {record['eval/cloze_acc']:.1%} ([gMASK] {record['eval/cloze_causal_acc']:.1%})")
    if "eval/infill_acc" in record:
        parts.append(f"infill acc {record['eval/infill_acc']:.1%} ppl {record['eval/infill_ppl']:.1f}")
    parts += [show(record[key]) for key, show in _CONSOLE_FIELDS if record.get(key) is not None]
    if record.get("nonfinite_skipped"):
        parts.append(f"skipped {record['nonfinite_skipped']}")
    return " | ".join(parts)


_CONSOLE_FIELDS = (
    ("lr", lambda v: f"lr {v:.2e}"), ("grad_norm", lambda v: f"gnorm {v:.3f}"),
    ("tokens_per_s", lambda v: f"{si(v)} tok/s"), ("tflops", lambda v: f"{v:.3g} TFLOP/s"),
    ("mfu", lambda v: f"mfu {v:.1%}"), ("max_memory_gib", lambda v: f"mem {v:.2f} GiB"),
    ("tokens_seen", lambda v: f"{si(v)} tok"), ("eta_s", lambda v: f"eta {duration(v)}"))


def si(count: float) -> str:
    """1234 -> '1.23k', 4.5e9 -> '4.5B'."""
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= threshold:
            return f"{count / threshold:.3g}{suffix}"
    return f"{count:.0f}"


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 95 -> '1m35s', 7.2 -> '7s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def print_line(record: dict[str, Any], max_steps: int) -> None:
    print(console_line(record, max_steps), file=sys.stdout, flush=True)


def _scalars(record: dict[str, Any]):
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield key, value


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file we wrote. A last line without its newline is a write torn by a
    crash: dropped. Any other line that is blank or not a JSON object is refused naming file and line."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines[-1]:  # no newline after it: torn
        if _json_object(lines[-1]) is None:
            logger.warning("%s: dropped line %d, torn by a crash mid-write: %.60r", path, len(lines), lines[-1])
            lines[-1] = ""
    records = []
    for number, line in enumerate(lines[:-1] if not lines[-1] else lines, 1):
        record = _json_object(line)
        if record is None:
            what = "is blank" if not line.strip() else f"is not a JSON object: {line[:60]!r}"
            raise ValueError(f"{path}:{number} {what}; delete that line (or the file) and re-run")
        records.append(record)
    return records


def _json_object(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _truncate_after(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (the checkpoint resumed from); rewritten atomically."""
    if not path.is_file():
        return
    kept = [record for record in read_jsonl(path) if record.get("step", 0) <= step]
    partial = path.with_name(f".{path.name}.tmp{os.getpid()}")
    partial.write_text("".join(json.dumps(record, allow_nan=True) + "\n" for record in kept), encoding="utf-8")
    partial.replace(path)
