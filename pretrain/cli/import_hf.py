"""``python -m pretrain import-hf HF_DIR --out RUN_DIR``: a local transformers GLM checkpoint as a run directory.

GLM-4 (``GlmForCausalLM``) or GLM-1 (THUDM's ``GLMModel`` state dict): the weights become checkpoint
``step_00000000`` (DCP, model only), ``config.yaml`` holds a ``model`` section (the matching preset plus
the fields that differ) that rebuilds it, and the tokenizer comes along when HF_DIR has one (its GLM
special tokens found by role, missing ones appended). Continue pretraining from it with
``train.init_from=RUN_DIR``; export it back with ``python -m pretrain export RUN_DIR``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.data.tokenizer import load_tokenizer, resolve_special_tokens
from pretrain.model.hf import read_checkpoint
from pretrain.model.presets import ModelSection
from pretrain.train.run_dir import write_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", type=Path, help="transformers checkpoint directory (config.json + weights)")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create (must not exist or be empty)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer to record with the weights (default: HF_DIR's, when it has a tokenizer.json)")


def main(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"--out {args.out} is not empty; give a new run directory")
    imported = read_checkpoint(args.hf_dir)
    model = imported.model()
    tokenizer_path = args.tokenizer or (args.hf_dir if (args.hf_dir / "tokenizer.json").is_file() else None)
    tokenizer = special = None
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
        special = resolve_special_tokens(tokenizer)
        if tokenizer.get_vocab_size() > model.cfg.vocab_size:
            raise ValueError(f"the tokenizer {tokenizer_path} has {tokenizer.get_vocab_size()} tokens (GLM special "
                             f"tokens included), more than the checkpoint's vocab_size={model.cfg.vocab_size}")
    checkpoint = write_run_dir(args.out, model, ModelSection(imported.preset, imported.fields), special, tokenizer)
    print(f"imported {imported.layout} checkpoint {args.hf_dir}: {model.num_params():,} parameters as preset "
          f"{imported.preset} + {sorted(imported.fields)}")
    print(f"wrote {args.out / 'config.yaml'}, {checkpoint}" + (f", {args.out / 'tokenizer.json'}" if tokenizer else
                                                               " (no tokenizer: HF_DIR has no tokenizer.json)"))
    return 0
