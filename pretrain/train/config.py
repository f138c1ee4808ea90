"""The run config: the trainer's own sections and the top-level ``Config`` that composes every
package's section (model, objective, data, parallel), loaded strictly from YAML plus overrides."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from pretrain.data.config import DataConfig
from pretrain.model.presets import ModelSection
from pretrain.objectives import ObjectiveConfig
from pretrain.parallel.config import ParallelConfig


@dataclasses.dataclass
class TrainConfig:
    max_steps: int = 100  # optimizer steps of the run
    seed: int = 0  # model init, data order and training masks (eval.seed keys the held-out ones)
    global_batch_size: int = 8  # rows per optimizer step, over all data-parallel ranks
    micro_batch_size: int = 8  # rows per forward/backward on one rank
    seq_len: int = 128  # tokens per row (Part A + Part B, padding included)
    lr: float = 3e-4  # peak learning rate (after warmup)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr
    lr_decay_steps: int | None = None  # length of warmup+cosine; defaults to max_steps
    weight_decay: float = 0.1  # AdamW decay of matrices and embeddings (not norms or biases)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW moment decays
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still measured and logged)
    max_consecutive_nonfinite: int = 5  # skipped NaN/inf steps in a row before the run stops
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    compile: bool = False  # torch.compile each block (GPU: fused kernels, fewer launches)
    dtype: typing.Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # full: every rank builds and initializes the whole model, then shards it (bit-identical to a
    # single process). meta: build on the meta device, shard, then allocate and initialize only the
    # local shards: no rank ever holds the full weights (large presets on GPU nodes; torch engine).
    init_device: typing.Literal["full", "meta"] = "full"
    # Start from these weights (continued pretraining): a run directory (its latest checkpoint, e.g. made by
    # `import-hf`) or a transformers GLM checkpoint directory. Fresh optimizer, step 0; null: random init.
    init_from: str | None = None

    def validate(self) -> None:
        for name in ("max_steps", "global_batch_size", "micro_batch_size", "seq_len", "max_consecutive_nonfinite"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ValueError(f"lr_decay_steps={self.lr_decay_steps} must be >= 1 (or null for max_steps)")
        if self.warmup_steps < 0 or self.warmup_steps > (self.lr_decay_steps or self.warmup_steps):
            raise ValueError(f"warmup_steps={self.warmup_steps} must lie in [0, lr_decay_steps="
                             f"{self.lr_decay_steps}]")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, "
                             f"min_lr_ratio={self.min_lr_ratio}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"grad_clip={self.grad_clip} and weight_decay={self.weight_decay} must be >= 0")


@dataclasses.dataclass
class CheckpointConfig:
    interval: int = 0  # save every N steps (0: only at the end and on SIGTERM/SIGUSR1)
    keep: int = 3  # complete checkpoints kept (oldest deleted first)
    dir: str | None = None  # default: <run.dir>/checkpoints
    # latest: continue from the newest complete checkpoint in dir, if any; a step number: from that one;
    # none: start over. Checkpoints newer than the one resumed from are moved to <dir>/abandoned/.
    resume_from: int | typing.Literal["latest", "none"] = "latest"
    # When the latest checkpoint cannot be read (truncated, edited, saved in a NaN streak), resume from
    # the newest one that can instead of stopping with a message that names both.
    fallback_to_previous: bool = False
    # Torch engine: write checkpoints from a background thread while training goes on (the next save
    # waits for the last); false: every rank waits for its files.
    async_save: bool = True

    def validate(self) -> None:
        if self.interval < 0 or self.keep < 1:
            raise ValueError(f"need interval >= 0 and keep >= 1, got interval={self.interval}, keep={self.keep}")
        if isinstance(self.resume_from, int) and self.resume_from < 0:
            raise ValueError(f"resume_from={self.resume_from} must be a step >= 0, latest or none")


@dataclasses.dataclass
class RunConfig:
    dir: str = "runs/default"  # config.yaml, metrics.jsonl, TensorBoard events, checkpoints


@dataclasses.dataclass
class EvalConfig:
    interval: int = 0  # evaluate held-out loss every N steps and at the last one (0: never)
    batches: int = 2  # global batches (global_batch_size held-out samples each) per evaluation
    # ObjectiveConfig fields to evaluate under instead of the training objective (null: the training
    # one). Fixed across runs, it scores them on the same held-out windows and masks (ablations).
    objective: dict[str, Any] | None = None
    # At every evaluation also score cloze accuracy ([MASK] and [gMASK] views) and blank infilling on the
    # held-out documents, per language (pretrain/train/downstream.py: eval/cloze_acc, eval/infill_ppl, ...).
    downstream: bool = False
    downstream_documents: int | None = None  # held-out documents per language it reads (null: all of them)
    # Seed of the held-out masks (eval objective, downstream infill spans), apart from train.seed so that
    # runs of every training seed are scored on the same masks (ablate --seeds).
    seed: int = 0

    def validate(self) -> None:
        if self.interval < 0 or self.batches < 1:
            raise ValueError(f"need interval >= 0 and batches >= 1, got interval={self.interval}, "
                             f"batches={self.batches}")
        if self.downstream_documents is not None and self.downstream_documents < 1:
            raise ValueError(f"downstream_documents={self.downstream_documents} must be >= 1 (or null for every "
                             f"held-out document)")


@dataclasses.dataclass
class WandbConfig:
    enabled: bool = False  # also log every record to Weights & Biases (the wandb package, in the [dev] extra)
    project: str = "glm-pretrain"  # W&B project
    entity: str | None = None  # W&B team or user (null: the logged-in user's default)
    name: str | None = None  # W&B run name (null: the run directory's name)
    mode: typing.Literal["online", "offline"] = "online"  # offline: files only, upload later with `wandb sync`


@dataclasses.dataclass
class MetricsConfig:
    log_interval: int = 1  # write metrics.jsonl, TensorBoard and the console line every N steps
    tensorboard: bool = True  # TensorBoard events under <run.dir>/tensorboard
    peak_tflops: float | None = None  # per-device peak for MFU; default: looked up from the GPU name
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)

    def validate(self) -> None:
        if self.log_interval < 1:
            raise ValueError(f"log_interval={self.log_interval} must be >= 1")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops={self.peak_tflops} must be > 0 (or null)")


@dataclasses.dataclass
class Config:
    model: ModelSection
    objective: ObjectiveConfig
    data: DataConfig
    train: TrainConfig
    parallel: ParallelConfig
    checkpoint: CheckpointConfig
    run: RunConfig
    eval: EvalConfig
    metrics: MetricsConfig

    def checkpoint_dir(self) -> Path:
        return checkpoint_dir(self.checkpoint.dir, self.run.dir)

    def eval_objective(self) -> ObjectiveConfig:
        if self.eval.objective is None:
            return self.objective
        return from_dict(ObjectiveConfig, self.eval.objective, "eval.objective")

    def to_dict(self) -> dict:
        data = to_dict(self)
        data["model"] = self.model.to_dict()
        return data


def checkpoint_dir(configured: str | None, run_dir: str | Path) -> Path:
    """``checkpoint.dir``, else ``<run.dir>/checkpoints``."""
    return Path(configured) if configured else Path(run_dir) / "checkpoints"


# written by the trainer into a run's config.yaml next to the inputs: derived, ignored when it is loaded again
RESOLVED_KEYS = ("resolved_model", "resolved_special_tokens")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a run config (YAML) with dotted ``key=value`` overrides into a validated ``Config``.

    Checks that need the world size or the tokenizer (tp and dp divisibility, vocabulary) run in the
    trainer before any work: see pretrain.train.setup.validate_topology."""
    raw = apply_overrides(load_yaml(path), list(overrides))
    sections = {"objective": ObjectiveConfig, "data": DataConfig, "train": TrainConfig,
                "parallel": ParallelConfig, "checkpoint": CheckpointConfig, "run": RunConfig,
                "eval": EvalConfig, "metrics": MetricsConfig}
    unknown = sorted(set(raw) - set(sections) - {"model", *RESOLVED_KEYS})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; valid sections are "
                          f"{sorted([*sections, 'model'])}")
    built = {name: from_dict(cls, raw.get(name), f"{path}: {name}") for name, cls in sections.items()}
    if built["eval"].objective is not None:  # fail at load time, naming the file
        from_dict(ObjectiveConfig, built["eval"].objective, f"{path}: eval.objective")
    return Config(model=ModelSection.from_section(raw.get("model"), f"{path}: model"), **built)
