"""One CLI: ``python -m pretrain {train,tokenizer,preprocess,inspect,bench,ablate,export}``.

Each subcommand lives in the package that owns it and exposes ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their subcommand runs, so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    # name: (module, one-line help)
    "train": ("pretrain.train.cli", "train a model (also under torchrun)"),
    "tokenizer": ("pretrain.data.tokenizer_cli", "train or inspect a byte-level BPE tokenizer"),
    "preprocess": ("pretrain.data.preprocess_cli", "tokenize raw corpora once into sharded token files"),
    "inspect": ("pretrain.data.inspect_cli", "show what the model is trained on"),
    "export": ("pretrain.model.export_cli", "export a trained GLM-4-shaped model for transformers' GlmForCausalLM"),
    "ablate": ("pretrain.train.ablate", "run an ablation sweep (configs/ablations/) and summarize it"),
    "bench": ("pretrain.bench_cli", "run a benchmark script from the checkout's bench/"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints help or the unknown-command error and exits
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    command_parser = argparse.ArgumentParser(prog=f"python -m pretrain {argv[0]}",
                                             description=SUBCOMMANDS[argv[0]][1])
    module.add_arguments(command_parser)
    return int(module.main(command_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
