"""Typed configs: dataclasses filled from YAML plus dotted `key=value` overrides, validated at the boundary.

Every package owns the dataclass for its own section (``ObjectiveConfig`` in ``objectives``,
``ModelConfig`` in ``model``, ...). This module holds the generic machinery: strict loading (unknown
keys and wrong types are errors that name the file and the key), overrides, and ``validate()`` hooks.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

import yaml

if TYPE_CHECKING:  # owned by their packages, imported lazily (they may import this module)
    from pretrain.data.config import DataConfig
    from pretrain.model.config import ModelConfig
    from pretrain.objectives import ObjectiveConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot work; the message names where it came from and what to change."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str], where: str = "command line") -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, returning a new dict."""
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: override {item!r}: value is not valid YAML: {err}") from err
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names the source (file and section) in errors."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from err
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass tree to plain YAML-able python objects."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(key_type, k, f"{where}.{k}"): _coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(tp, type):
        if tp is int and isinstance(value, bool) or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


# ---------------------------------------------------------------------------------------------
# The trainer's sections and the top-level Config. The model/objective/data sections are owned by
# their packages and imported lazily in load_config, so those packages may import this module.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainConfig:
    max_steps: int = 100
    seed: int = 0
    global_batch_size: int = 8  # rows per optimizer step, over all data-parallel ranks
    micro_batch_size: int = 8  # rows per forward/backward on one rank
    seq_len: int = 128
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0
    lr_decay_steps: int | None = None  # length of warmup+cosine; defaults to max_steps
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still measured and logged)
    max_consecutive_nonfinite: int = 5  # skipped NaN/inf steps in a row before the run stops
    activation_checkpointing: bool = False
    compile: bool = False
    dtype: typing.Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # full: every rank builds and initializes the whole model, then shards it (bit-identical to a
    # single process). meta: build on the meta device, shard, then allocate and initialize only the
    # local shards: no rank ever holds the full weights (large presets on GPU nodes; torch engine).
    init_device: typing.Literal["full", "meta"] = "full"

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
class ParallelConfig:
    engine: typing.Literal["torch", "deepspeed"] = "torch"
    tp: int = 1  # tensor-parallel size; data-parallel size = world_size / tp
    sequence_parallel: bool = False  # shard norms/residual activations over the sequence within TP
    # FSDP2 over the data-parallel ranks: "full" reshards parameters after forward (ZeRO-3),
    # "grad_op" keeps them gathered until backward (ZeRO-2: more memory, fewer all-gathers).
    fsdp: typing.Literal["full", "grad_op"] = "full"  # torch engine
    zero_stage: int = 1  # deepspeed engine: ZeRO stage 0-3 (0-2 with tp > 1: AutoTP composes with those)

    def validate(self) -> None:
        if self.tp < 1:
            raise ValueError(f"tp={self.tp} must be >= 1")
        if self.engine == "deepspeed":
            if not 0 <= self.zero_stage <= (2 if self.tp > 1 else 3):
                raise ValueError(f"zero_stage={self.zero_stage} with tp={self.tp}: DeepSpeed AutoTP composes with "
                                 f"ZeRO stages 0-2 (0-3 without TP); lower zero_stage or set tp=1")
            if self.sequence_parallel:
                raise ValueError("sequence_parallel is a torch-engine feature; set parallel.engine=torch or "
                                 "sequence_parallel=false")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel needs tp > 1; set parallel.tp or sequence_parallel=false")


@dataclasses.dataclass
class CheckpointConfig:
    interval: int = 0  # save every N steps (0: only at the end and on SIGTERM)
    keep: int = 3  # complete checkpoints kept (oldest deleted first)
    dir: str | None = None  # default: <run.dir>/checkpoints
    resume: bool = True  # continue from the latest complete checkpoint in dir, if any

    def validate(self) -> None:
        if self.interval < 0 or self.keep < 1:
            raise ValueError(f"need interval >= 0 and keep >= 1, got interval={self.interval}, keep={self.keep}")


@dataclasses.dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclasses.dataclass
class EvalConfig:
    interval: int = 0  # evaluate held-out loss every N steps (0: never)
    batches: int = 2  # global batches (global_batch_size held-out samples each) per evaluation
    # ObjectiveConfig fields to evaluate under instead of the training objective (null: the training
    # one). Fixed across runs, it scores them on the same held-out windows and masks (ablations).
    objective: dict[str, Any] | None = None

    def validate(self) -> None:
        if self.interval < 0 or self.batches < 1:
            raise ValueError(f"need interval >= 0 and batches >= 1, got interval={self.interval}, "
                             f"batches={self.batches}")


@dataclasses.dataclass
class MetricsConfig:
    log_interval: int = 1
    tensorboard: bool = True
    peak_tflops: float | None = None  # per-device peak for MFU; default: looked up from the GPU name

    def validate(self) -> None:
        if self.log_interval < 1:
            raise ValueError(f"log_interval={self.log_interval} must be >= 1")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops={self.peak_tflops} must be > 0 (or null)")


@dataclasses.dataclass
class ModelSection:
    """The ``model`` section: an optional ``preset`` (pretrain.model.PRESETS) plus ModelConfig fields
    overriding it. Without ``vocab_size`` the model takes the tokenizer's (the loader's) vocabulary."""
    preset: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_section(cls, data: Mapping[str, Any] | None, where: str) -> "ModelSection":
        data = dict(data or {})
        preset = data.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"{where}.preset: expected a preset name, got {preset!r}")
        section = cls(preset, data)
        section.resolve(vocab_size=64, where=where)  # validate now, standing in for the tokenizer's vocab
        return section

    def resolve(self, vocab_size: int, where: str = "model") -> "ModelConfig":
        """The ModelConfig; ``vocab_size`` (the tokenizer's) applies when the section leaves it unset,
        also over a preset's (which belongs to the preset's original tokenizer)."""
        from pretrain.model.config import ModelConfig
        from pretrain.model.presets import model_config
        fields = {"vocab_size": vocab_size, **self.fields}
        if self.preset is None:
            return from_dict(ModelConfig, fields, where)
        try:
            return model_config(self.preset, **fields)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from err


@dataclasses.dataclass
class Config:
    model: ModelSection
    objective: "ObjectiveConfig"
    data: "DataConfig"
    train: TrainConfig
    parallel: ParallelConfig
    checkpoint: CheckpointConfig
    run: RunConfig
    eval: EvalConfig
    metrics: MetricsConfig

    def checkpoint_dir(self) -> Path:
        return checkpoint_dir(self.checkpoint.dir, self.run.dir)

    def eval_objective(self) -> "ObjectiveConfig":
        if self.eval.objective is None:
            return self.objective
        from pretrain.objectives import ObjectiveConfig
        return from_dict(ObjectiveConfig, self.eval.objective, "eval.objective")

    def to_dict(self) -> dict:
        data = to_dict(self)
        data["model"] = {**({"preset": self.model.preset} if self.model.preset else {}), **self.model.fields}
        return data


def checkpoint_dir(configured: str | None, run_dir: str | Path) -> Path:
    """``checkpoint.dir``, else ``<run.dir>/checkpoints``."""
    return Path(configured) if configured else Path(run_dir) / "checkpoints"


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a run config (YAML) with dotted ``key=value`` overrides into a validated ``Config``.

    Checks that need the world size or the tokenizer (tp and dp divisibility, vocabulary) run in the
    trainer before any work: see pretrain.train.setup.validate_topology."""
    from pretrain.data.config import DataConfig
    from pretrain.objectives import ObjectiveConfig
    raw = apply_overrides(load_yaml(path), list(overrides))
    sections = {"objective": ObjectiveConfig, "data": DataConfig, "train": TrainConfig,
                "parallel": ParallelConfig, "checkpoint": CheckpointConfig, "run": RunConfig,
                "eval": EvalConfig, "metrics": MetricsConfig}
    unknown = sorted(set(raw) - set(sections) - {"model"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; valid sections are "
                          f"{sorted([*sections, 'model'])}")
    built = {name: from_dict(cls, raw.get(name), f"{path}: {name}") for name, cls in sections.items()}
    if built["eval"].objective is not None:  # fail at load time, naming the file
        from_dict(ObjectiveConfig, built["eval"].objective, f"{path}: eval.objective")
    return Config(model=ModelSection.from_section(raw.get("model"), f"{path}: model"), **built)
