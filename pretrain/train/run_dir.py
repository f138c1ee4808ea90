"""A training run directory as other tools read it: the resolved model config and special tokens
(``config.yaml``, keys ``resolved_model`` and ``resolved_special_tokens``), the tokenizer in use
(``tokenizer.json``) and the model weights of a complete DCP checkpoint, loaded into one process
(DCP reshards any saved (dp, tp) layout). ``write_run_dir`` makes one from weights alone (import-hf):
its checkpoint ``step_00000000`` holds only the model, no optimizer or trainer state."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import yaml
from tokenizers import Tokenizer

from pretrain.config import ConfigError, from_dict, load_yaml
from pretrain.data.tokenizer import load_tokenizer
from pretrain.model.config import ModelConfig
from pretrain.model.glm import GLMModel
from pretrain.model.presets import ModelSection
from pretrain.parallel import safe_dcp
from pretrain.tokens import CORE_ROLES, SpecialTokens
from pretrain.train.checkpoint import TRAINER_STATE, latest_checkpoint, mark_complete, step_dir, trainer_state
from pretrain.train.config import checkpoint_dir

TOKENIZER = "tokenizer.json"

logger = logging.getLogger(__name__)


def _resolved(run_dir: Path, key: str) -> dict:
    config_path = run_dir / "config.yaml"
    data = load_yaml(config_path)
    if key not in data:
        raise ConfigError(f"{config_path} has no {key!r} section; is {run_dir} a training run directory?")
    return data[key]


@contextlib.contextmanager
def _one_process():
    """DCP without collectives: this process alone reads or writes, also inside a distributed run (init_from
    reads on rank 0 only). DCP warns on every such call that it assumes so; we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def resolved_model_config(run_dir: Path) -> ModelConfig:
    return from_dict(ModelConfig, _resolved(run_dir, "resolved_model"), f"{run_dir / 'config.yaml'}:resolved_model")


def resolved_special_tokens(run_dir: Path) -> SpecialTokens:
    roles = dict(_resolved(run_dir, "resolved_special_tokens"))
    return SpecialTokens(**{role: roles.pop(role) for role in CORE_ROLES}, extra=roles)


def run_tokenizer(run_dir: Path) -> Tokenizer | None:
    """The tokenizer the run used (special tokens it added included), or None when the run has none."""
    return load_tokenizer(run_dir / TOKENIZER) if (run_dir / TOKENIZER).is_file() else None


def run_checkpoint(run_dir: Path, checkpoint: Path | None = None) -> Path:
    """``checkpoint``, else the run's latest complete one; refuses what DCP cannot read."""
    if checkpoint is None:
        root = checkpoint_dir((load_yaml(run_dir / "config.yaml").get("checkpoint") or {}).get("dir"), run_dir)
        checkpoint = latest_checkpoint(root)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint under {root}; pass --checkpoint")
    if not checkpoint.is_dir():
        raise ConfigError(f"checkpoint {checkpoint} is not a directory")
    engine = trainer_state(checkpoint)["topology"]["engine"] if (checkpoint / TRAINER_STATE).is_file() else "torch"
    if engine != "torch":
        raise ConfigError(f"checkpoint {checkpoint} was written by the {engine} engine; only the torch engine's "
                          f"DCP checkpoints are read here")
    return checkpoint


def load_trained_model(run_dir: Path, checkpoint: Path | None = None) -> GLMModel:
    """The run's model (eval mode, CPU, fp32) with the weights of ``checkpoint`` (default: the latest
    complete one)."""
    cfg = resolved_model_config(run_dir)
    checkpoint = run_checkpoint(run_dir, checkpoint)
    with torch.device("meta"):
        model = GLMModel(cfg)
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    with _one_process():  # fills every tensor of this model, or raises naming the missing key
        safe_dcp.load(state, checkpoint, no_dist=True)
    model.load_state_dict(state["model"])
    logger.info("loaded %s", checkpoint)
    return model.eval()


def write_run_config(run_dir: Path, config: dict, model_cfg: ModelConfig, special: SpecialTokens | None,
                     tokenizer: Tokenizer | None) -> None:
    """``config`` as config.yaml with the resolved model (and special tokens), and the tokenizer beside it:
    what export, infill and evaluation read from a run directory (a trainer's and an import's alike)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "resolved_model": dataclasses.asdict(model_cfg)}
    if special is not None:
        config["resolved_special_tokens"] = special.roles()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(str(run_dir / TOKENIZER))


def write_run_dir(run_dir: Path, model: GLMModel, section: ModelSection, special: SpecialTokens | None,
                  tokenizer: Tokenizer | None) -> Path:
    """A run directory holding ``model``'s weights as checkpoint ``step_00000000`` (model only), a config.yaml
    whose ``model`` section rebuilds it (with resolved_model / resolved_special_tokens, as a trainer writes
    them) and the tokenizer. Returns the checkpoint directory."""
    write_run_config(run_dir, {"model": section.to_dict()}, model.cfg, special, tokenizer)
    checkpoint = step_dir(checkpoint_dir(None, run_dir), 0)
    with _one_process():
        dcp.save({"model": model.state_dict()}, checkpoint_id=checkpoint, no_dist=True)
    mark_complete(checkpoint, weights_only=True)
    return checkpoint
