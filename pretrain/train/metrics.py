"""Rank-0 metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard scalars, a
console line; and the PaLM model-FLOPs utilisation.

MFU = model FLOPs per token (pretrain.model.flops, PaLM: 6N + 12·L·H·D·P, no causal halving) ×
tokens/s per device / the device's dense bf16 peak. P is each batch's real attention work: the
average number of keys a query may see under its mask (GLM's Part A is bidirectional, Part B
causal), so a GLM batch and a causal batch are charged for what they really compute.
"""
from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

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
    if "eval/cloze_acc" in record:  # eval.downstream
        parts.append(f"cloze acc {record['eval/cloze_acc']:.1%} ([gMASK] {record['eval/cloze_causal_acc']:.1%})")
    if "eval/infill_acc" in record:
        parts.append(f"infill acc {record['eval/infill_acc']:.1%} ppl {record['eval/infill_ppl']:.1f}")
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


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
