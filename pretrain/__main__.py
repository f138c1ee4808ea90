"""glm-pretrain: ``python -m pretrain COMMAND``, every command one module in ``pretrain/cli/``.

Each module exposes ``add_arguments(parser)`` and ``main(args) -> int``; it is imported only when its
command runs, so ``--help`` is fast. Every verb runs under ``cli/_errors.run_verb``: an error a person
can act on is one line and exit code 2 (``--debug`` shows the traceback). The CLIs sit on top of the
packages: nothing imports them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pretrain.cli._errors import add_debug_argument, run_verb

SUBCOMMANDS = {
    # name: (module in pretrain/cli/, one-line help)
    "train": ("train", "train a model (also under torchrun)"),
    "tokenizer": ("tokenizer", "train or inspect a byte-level BPE tokenizer"),
    "preprocess": ("preprocess", "tokenize raw corpora once into sharded token files"),
    "inspect": ("inspect", "show what the model is trained on"),
    "export": ("export", "export a trained GLM-4-shaped model for transformers' GlmForCausalLM"),
    "import-hf": ("import_hf", "turn a transformers GLM checkpoint into a run directory"),
    "infill": ("infill", "fill [MASK]/[sMASK]/[gMASK] blanks with a trained model"),
    "plan": ("plan", "enumerate parallel layouts for a model and cluster: memory, bubble, step time"),
    "config": ("config", "list every config key with its type, default and help"),
    "ablate": ("ablate", "run an ablation sweep (configs/ablations/) and summarize it"),
    "bench": ("bench", "run a benchmark script from the checkout's bench/"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints help or the unknown-command error and exits
    module = importlib.import_module(f"pretrain.cli.{SUBCOMMANDS[argv[0]][0]}")
    command_parser = argparse.ArgumentParser(prog=f"python -m pretrain {argv[0]}",
                                             description=SUBCOMMANDS[argv[0]][1])
    module.add_arguments(command_parser)
    add_debug_argument(command_parser)
    return run_verb(argv[0], module.main, command_parser.parse_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
