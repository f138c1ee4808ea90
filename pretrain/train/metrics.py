"""Rank-0 metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard scalars, a
console line; and the PaLM model-FLOPs utilisation.

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
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Dense bf16 TFLOP/s, no sparsity (reference-frameworks.md §2.1; torchtitan get_peak_flops).
PEAK_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """Per-device peak for MFU: the override, else the GPU's from the table, else None (CPU, unknown GPU)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def max_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsWriter:
    """Writes on rank 0 only (``enabled``); every method is a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int):
        self.enabled = enabled
        self.jsonl_path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
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

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def console_line(record: dict[str, Any], max_steps: int) -> str:
    parts = [f"step {record['step']}/{max_steps}"]
    if "loss" in record:
        per_strategy = ", ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("loss/"))
        parts.append(f"loss {record['loss']:.4f}" + (f" ({per_strategy})" if per_strategy else ""))
    if "eval/loss" in record:
        parts.append(f"eval loss {record['eval/loss']:.4f}")
    for key, fmt in (("lr", "lr {:.2e}"), ("grad_norm", "gnorm {:.3f}"), ("tokens_per_s", "{:.0f} tok/s"),
                     ("tflops", "{:.3g} TFLOP/s"), ("mfu", "mfu {:.1%}"), ("max_memory_gib", "mem {:.2f} GiB")):
        if record.get(key) is not None:
            parts.append(fmt.format(record[key]))
    if record.get("nonfinite_skipped"):
        parts.append(f"skipped {record['nonfinite_skipped']}")
    return " | ".join(parts)


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
