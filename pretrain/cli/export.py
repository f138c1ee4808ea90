"""``python -m pretrain export RUN_DIR --out DIR``: a trained GLM-4-shaped model as a transformers checkpoint.

Loads the run's model (pretrain.train.run_dir: any TP/DP layout, resharded to this process) and writes
``config.json`` + ``model.safetensors`` for ``GlmForCausalLM.from_pretrained``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.model.export import export_hf
from pretrain.train.run_dir import load_trained_model, resolved_special_tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="training run directory (holds config.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the transformers checkpoint to")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a step_XXXXXXXX checkpoint directory (default: the run's latest complete one)")


def main(args: argparse.Namespace) -> int:
    try:
        out = export_hf(load_trained_model(args.run_dir, args.checkpoint), args.out,
                        resolved_special_tokens(args.run_dir))
    except ValueError as err:  # ConfigError included: the message names the file and what to change
        print(f"export error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    return 0
