"""``python -m pretrain infill --run RUN_DIR "text with [MASK] blanks" ...``: ask a trained model.

Each prompt's blanks ([MASK], [sMASK], [gMASK]: the run's own token strings) are filled the GLM way
(pretrain/generate/infill.py) and the text is printed with the blanks filled, one line per prompt.
Greedy unless --temperature > 0; sampling is seeded per prompt, so a prompt gets the same fill alone
or in a batch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pretrain.config import from_dict, load_yaml
from pretrain.data.tokenizer import load_tokenizer
from pretrain.generate.infill import fill_blanks
from pretrain.generate.prompt import filled_text, parse_prompt
from pretrain.generate.sampling import Sampling
from pretrain.objectives import ObjectiveConfig, resolve_gmask_positions
from pretrain.train.run_dir import load_trained_model, resolved_special_tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help='text with blanks, e.g. "Paris is the [MASK] of France."')
    parser.add_argument("--run", type=Path, required=True, help="training run directory (config.yaml, tokenizer.json)")
    parser.add_argument("--file", type=Path, help="more prompts, one per line")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a step_XXXXXXXX checkpoint directory (default: the run's latest complete one)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens written into one blank at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sample")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set reaching this mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--mark", action="store_true", help="show each fill as [[fill]]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(args: argparse.Namespace) -> int:
    texts = list(args.prompts)
    if args.file is not None:
        if not args.file.is_file():
            raise ValueError(f"--file {args.file} does not exist")
        texts += [line for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError("no prompt: give PROMPT arguments or --file with one prompt per line")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} must be >= 1")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed).validate()
    config_path = args.run / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{args.run} is not a training run directory: {config_path} does not exist")
    tokenizer = load_tokenizer(args.run / "tokenizer.json")
    special = resolved_special_tokens(args.run)
    prompts = []
    for number, text in enumerate(texts, 1):
        try:
            prompts.append(parse_prompt(text, tokenizer, special))
        except ValueError as err:
            raise ValueError(f"prompt {number}: {err}") from None
    objective = from_dict(ObjectiveConfig, load_yaml(config_path).get("objective"), f"{config_path}: objective")
    model = load_trained_model(args.run, args.checkpoint).to(args.device)
    objective = resolve_gmask_positions(objective, model.cfg.position_encoding)  # as the run trained
    # never write special tokens other than the ends of a block, nor the vocabulary's padding rows
    banned = [i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special]
    banned += range(tokenizer.get_vocab_size(), model.cfg.vocab_size)
    banned = sorted(set(banned) - {special.eop, special.eos})
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        fills = fill_blanks(model, [p.part_a for p in batch], special, max_new_tokens=args.max_new_tokens,
                            sampling=sampling, block_positions=objective.block_positions,
                            gmask_positions=objective.gmask_positions, banned=banned,
                            prompt_ids=range(start, start + len(batch)))
        for prompt, blocks in zip(batch, fills):
            print(filled_text(prompt, [tokenizer.decode(block) for block in blocks], args.mark), flush=True)
    return 0
