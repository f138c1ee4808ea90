"""A training run directory as other tools read it: the resolved model config and special tokens
(``config.yaml``, keys ``resolved_model`` and ``resolved_special_tokens``), the tokenizer in use
(``tokenizer.json``) and the model weights of a complete DCP checkpoint, loaded into one process
(DCP reshards any saved (dp, tp) layout)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from pretrain.config import ConfigError, from_dict, load_yaml
from pretrain.model.config import ModelConfig
from pretrain.model.glm import GLMModel
from pretrain.parallel import safe_dcp
from pretrain.train.checkpoint import latest_checkpoint
from pretrain.tokens import CORE_ROLES, SpecialTokens
from pretrain.train.config import checkpoint_dir

logger = logging.getLogger(__name__)


def _resolved(run_dir: Path, key: str) -> dict:
    config_path = run_dir / "config.yaml"
    data = load_yaml(config_path)
    if key not in data:
        raise ConfigError(f"{config_path} has no {key!r} section; is {run_dir} a training run directory?")
    return data[key]


def resolved_model_config(run_dir: Path) -> ModelConfig:
    return from_dict(ModelConfig, _resolved(run_dir, "resolved_model"), f"{run_dir / 'config.yaml'}:resolved_model")


def resolved_special_tokens(run_dir: Path) -> SpecialTokens:
    roles = dict(_resolved(run_dir, "resolved_special_tokens"))
    return SpecialTokens(**{role: roles.pop(role) for role in CORE_ROLES}, extra=roles)


def load_trained_model(run_dir: Path, checkpoint: Path | None = None) -> GLMModel:
    """The run's model (eval mode, CPU, fp32) with the weights of ``checkpoint`` (default: the latest
    complete one)."""
    cfg = resolved_model_config(run_dir)
    if checkpoint is None:
        root = checkpoint_dir((load_yaml(run_dir / "config.yaml").get("checkpoint") or {}).get("dir"), run_dir)
        checkpoint = latest_checkpoint(root)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint under {root}; pass --checkpoint")
    if not checkpoint.is_dir():
        raise ConfigError(f"checkpoint {checkpoint} is not a directory")
    with torch.device("meta"):
        model = GLMModel(cfg)
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    safe_dcp.load(state, checkpoint)  # fills every tensor of this model, or raises naming the missing key
    model.load_state_dict(state["model"])
    logger.info("loaded %s", checkpoint)
    return model.eval()
