"""``python -m pretrain export RUN_DIR --out DIR``: a trained GLM-4-shaped model as a transformers checkpoint.

Reads the run's resolved model config (``RUN_DIR/config.yaml``, key ``resolved_model``), loads the model
weights of a DCP checkpoint (any TP/DP layout: DCP reshards to this single process) and writes
``config.json`` + ``model.safetensors`` for ``GlmForCausalLM.from_pretrained``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from pretrain.config import ConfigError, checkpoint_dir, from_dict, load_yaml
from pretrain.model.config import ModelConfig
from pretrain.model.export import export_hf
from pretrain.model.glm import GLMModel

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="training run directory (holds config.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the transformers checkpoint to")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a step_XXXXXXXX checkpoint directory (default: the run's latest complete one)")


def load_trained_model(run_dir: Path, checkpoint: Path | None = None) -> GLMModel:
    from pretrain.train.checkpoint import latest_checkpoint

    config_path = run_dir / "config.yaml"
    data = load_yaml(config_path)
    if "resolved_model" not in data:
        raise ConfigError(f"{config_path} has no 'resolved_model' section; is {run_dir} a training run directory?")
    cfg = from_dict(ModelConfig, data["resolved_model"], f"{config_path}:resolved_model")
    if checkpoint is None:
        root = checkpoint_dir((data.get("checkpoint") or {}).get("dir"), run_dir)
        checkpoint = latest_checkpoint(root)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint under {root}; pass --checkpoint")
    if not checkpoint.is_dir():
        raise ConfigError(f"checkpoint {checkpoint} is not a directory")
    with torch.device("meta"):
        model = GLMModel(cfg)
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint)  # fills every tensor of this model, or raises naming the missing key
    model.load_state_dict(state["model"])
    logger.info("loaded %s", checkpoint)
    return model.eval()


def main(args: argparse.Namespace) -> int:
    try:
        out = export_hf(load_trained_model(args.run_dir, args.checkpoint), args.out)
    except ValueError as err:  # ConfigError included: the message names the file and what to change
        print(f"export error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    return 0
