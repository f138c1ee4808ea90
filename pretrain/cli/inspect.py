"""``python -m pretrain inspect``: what the model is trained on. Per-language counts and tokenizer
fertility (tokens per character), then one sample decoded with its Part A and Part B side by side;
with ``--stats N``, what the objective does to N rows (``objectives.stats``) per strategy and language."""
from __future__ import annotations

import argparse
import itertools
import json
import textwrap

import numpy as np

from pretrain.config import from_dict, load_yaml
from pretrain.data.config import DataConfig
from pretrain.data.store import read_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a run config; its data and objective sections are used")
    parser.add_argument("--data", help="a preprocessed directory, or 'embedded' for the built-in corpus "
                                       "(default: the config's data section)")
    parser.add_argument("--tokenizer", help="the run's tokenizer (tokenizer.json or a transformers tokenizer "
                                            "directory); it must be the one the data was preprocessed with")
    parser.add_argument("--sample-id", type=int, default=0, help="global sample id to decode")
    parser.add_argument("--split", default="train", choices=("train", "valid"))
    parser.add_argument("--seq-len", type=int, help="default: the config's train.seq_len, else 512")
    parser.add_argument("--seed", type=int, help="default: the config's train.seed, else 0")
    parser.add_argument("--width", type=int, default=60, help="characters per column")
    parser.add_argument("--stats", type=int, metavar="N", help="objective statistics over N rows (from --sample-id on)")
    parser.add_argument("--json", action="store_true", help="with --stats: print only the statistics, as JSON")
    parser.add_argument("--strategy", help="use this strategy (or preset) instead of the config's objective.strategy")
    parser.add_argument("--language", help="only rows of this language (statistics and the sample shown)")


def _configs(args: argparse.Namespace):
    """(data, objective, train section, model section or None) from --config, with the command line taking
    precedence."""
    from pretrain.model.presets import ModelSection
    from pretrain.objectives import ObjectiveConfig  # the objective is only needed here
    raw = load_yaml(args.config) if args.config else {}
    data = from_dict(DataConfig, raw.get("data"), f"{args.config}: data")
    if args.data:
        data.path, data.corpus = (None, "embedded") if args.data == "embedded" else (args.data, None)
    if args.tokenizer:
        data.tokenizer = args.tokenizer
    data.num_workers = 0
    objective = dict(raw.get("objective") or {})
    if args.strategy:
        objective.update(strategy=args.strategy, mixture={})
    return (data, from_dict(ObjectiveConfig, objective, f"{args.config}: objective"), raw.get("train") or {},
            ModelSection.from_section(raw["model"], f"{args.config}: model") if raw.get("model") else None)


def sample_ids(loader, first: int, count: int, language: str | None) -> list[int]:
    """``count`` sample ids from ``first`` on, of ``language`` only when given."""
    if language is None:
        return list(range(first, first + count))
    if language not in loader.languages:
        raise ValueError(f"--language {language!r} is not in the data; it has {loader.languages}")
    found, sample_id = [], first
    while len(found) < count:
        if loader.dataset[sample_id].language == language:
            found.append(sample_id)
        sample_id += 1
        if sample_id - first > 1000 * count:
            raise ValueError(f"--language {language!r}: found only {len(found)} rows in {sample_id - first} samples")
    return found


def print_statistics(loader) -> None:
    manifest = read_manifest(loader.root)
    print(f"data {loader.root}\n  fingerprint {manifest['fingerprint']}, tokenizer sha256 "
          f"{manifest['tokenizer_sha256'][:16]}, tokenizer fingerprint {manifest.get('tokenizer_fingerprint', '-')}, "
          f"vocab {loader.vocab_size}")
    print(f"{'lang':>6} {'documents':>10} {'tokens':>12} {'tokens/char':>11} {'empty':>6} {'mix q':>7}")
    for lang, info in manifest["languages"].items():
        fertility = info["n_tokens"] / max(info["n_chars"], 1)
        print(f"{lang:>6} {info['n_docs']:>10} {info['n_tokens']:>12} {fertility:>11.3f} "
              f"{info['skipped_empty_documents']:>6} {loader.mixture_weights.get(lang, 0):>7.3f}")
    for lang, info in manifest["empty_languages"].items():
        print(f"{lang:>6} {'(empty: skipped, ' + str(info['skipped_empty_documents']) + ' empty documents)':>40}")


def side_by_side(left: str, right: str, width: int) -> str:
    a, b = textwrap.wrap(left, width) or [""], textwrap.wrap(right, width) or [""]
    return "\n".join(f"{x:<{width}} | {y}" for x, y in itertools.zip_longest(a, b, fillvalue=""))


def print_sample(loader, collator, sample_id: int, width: int) -> None:
    sample = loader.dataset[sample_id]
    batch = {k: v.numpy() for k, v in collator([sample]).items()}
    ids, segments, part_a = batch["input_ids"][0], batch["segment_ids"][0], batch["part_a"][0]
    positions, predicted = batch["position_ids"][0], batch["loss_mask"][0] > 0
    strategy = collator.strategy_names[batch["strategy_ids"][0][0]]
    decode = lambda tokens: loader.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=False)
    print(f"\nsample {sample_id} ({sample.language}, {sum(map(len, sample.documents))} raw tokens in "
          f"{len(sample.documents)} piece(s), strategy {strategy}, {int((segments >= 0).sum())}/{len(ids)} "
          f"positions used)")
    for segment in np.unique(segments[segments >= 0]):
        here = segments == segment
        inline = int((here & part_a & predicted).sum())  # MLM: predicted in place
        title = f"Part A (context, {int((here & part_a).sum())} tokens{f', {inline} predicted' if inline else ''})"
        print(f"\n{title:<{width}} | Part B (generated, {int((here & ~part_a).sum())} tokens)")
        in_b = here & ~part_a
        blocks = np.split(ids[in_b], piece_starts(positions[in_b], batch["block_position_ids"][0][in_b], collator.cfg))
        print(side_by_side(decode(ids[here & part_a]), "  ".join(decode(b) for b in blocks), width))


def piece_starts(positions: np.ndarray, block_positions: np.ndarray, objective) -> np.ndarray:
    """Where each span's Part-B piece begins: at block position 1; without block positions, where the
    position leaves its span's (the mask's, or one further when [gMASK] blocks prolong the text)."""
    if objective.block_positions:
        return np.flatnonzero(block_positions == 1)[1:]
    step = np.diff(positions)
    return np.flatnonzero((step != 0) & ~((step == 1) & (objective.gmask_positions == "continue"))) + 1


def main(args: argparse.Namespace) -> int:
    from pretrain.data.loader import open_data, samples_and_collator
    from pretrain.objectives import declared_special_tokens, resolve_gmask_positions
    data, objective, train, model = _configs(args)
    seq_len = args.seq_len or train.get("seq_len", 512)
    seed = train.get("seed", 0) if args.seed is None else args.seed
    global_batch = train.get("global_batch_size", 1)  # the per-batch strategy choice depends on it
    source = open_data(data, declared_special_tokens(objective))
    # gmask_positions=auto as the trainer resolves it: by the config's model positions (no model section,
    # as with --data alone: GLM's 2-D positions)
    encoding = None if model is None else model.resolve(vocab_size=source.vocab_size).position_encoding
    objective = resolve_gmask_positions(objective, encoding)
    loader, collator = samples_and_collator(data, source, objective, seq_len=seq_len, seed=seed,
                                            global_batch_size=global_batch, split=args.split)
    shown = sample_ids(loader, args.sample_id, 1, args.language)[0]
    if args.stats:
        from pretrain.objectives.stats import format_stats, objective_stats
        rows = [loader.dataset[i] for i in sample_ids(loader, args.sample_id, args.stats, args.language)]
        stats = objective_stats(collator, rows)
        if args.json:
            print(json.dumps(stats, indent=1))
            return 0
    print_statistics(loader)
    if args.stats:
        print("\n" + format_stats(stats))
    print_sample(loader, collator, shown, args.width)
    return 0
