"""``python -m pretrain export RUN_DIR --out DIR``: a trained GLM-4-shaped model as a transformers directory.

Loads the run's model (pretrain.train.run_dir: any TP/DP layout, resharded to this process) and writes
``config.json`` + ``model.safetensors`` for ``GlmForCausalLM``, ``generation_config.json``, the run's
tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) and a model card, so that ``AutoTokenizer``
and ``AutoModelForCausalLM`` load the directory as it is.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.model.export import export_hf
from pretrain.train.run_dir import load_trained_model, resolved_special_tokens, run_checkpoint, run_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="training run directory (holds config.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the transformers checkpoint to")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a step_XXXXXXXX checkpoint directory (default: the run's latest complete one)")


def main(args: argparse.Namespace) -> int:
    checkpoint = run_checkpoint(args.run_dir, args.checkpoint)
    tokenizer = run_tokenizer(args.run_dir)
    out = export_hf(load_trained_model(args.run_dir, checkpoint), args.out, resolved_special_tokens(args.run_dir),
                    tokenizer, source=f"{args.run_dir.name} ({checkpoint.name})")
    print(f"wrote {out}: config.json, model.safetensors, generation_config.json, README.md"
          + (", tokenizer.json, tokenizer_config.json" if tokenizer else " (the run has no tokenizer.json)"))
    return 0
