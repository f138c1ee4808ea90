"""``python -m pretrain tokenizer {train,show}``: train a byte-level BPE on temperature-sampled text, or
show an existing tokenizer.json (size, special ids, how a text encodes)."""
from __future__ import annotations

import argparse
import json

from pretrain.data.corpus import embedded_documents
from pretrain.data.sources import SourceOptions, read_sources, sample_texts
from pretrain.data.tokenizer import (load_tokenizer, resolve_special_tokens, sample_training_text, save_tokenizer,
                                     train_tokenizer)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", default=[], metavar="[LANG=]LOCATION",
                        help="a .jsonl/.json/.parquet/.txt/.arrow/.csv file, glob or directory, local or an fsspec "
                             "URL (s3://, gs://, hf://); a save_to_disk directory; datasets:NAME[?config=&split=]; "
                             "a Megatron PREFIX.idx/.bin; a directory of <lang>.<ext> files without LANG=; repeatable")
    parser.add_argument("--lang-column", help="column naming each row's language (inputs without LANG=)")
    parser.add_argument("--text-column", default="text", help="column holding the document text")
    parser.add_argument("--sample-by", default="line", choices=("line", "paragraph", "document"),
                        help=".txt inputs: one document per line, per blank-line paragraph, or per file")
    parser.add_argument("--storage-options", type=json.loads, default={}, metavar="JSON",
                        help='fsspec options for remote inputs, e.g. \'{"endpoint_url": "http://minio:9000"}\'')


def source_options(args: argparse.Namespace, **more) -> SourceOptions:
    return SourceOptions(text_column=args.text_column, lang_column=args.lang_column, sample_by=args.sample_by,
                         storage_options=args.storage_options, **more)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a tokenizer")
    add_source_arguments(train)
    train.add_argument("--embedded", action="store_true", help="train on the embedded multilingual corpus")
    train.add_argument("--output", required=True, help="where to write tokenizer.json")
    train.add_argument("--vocab-size", type=int, default=32000)
    train.add_argument("--alpha", type=float, default=0.3, help="language sampling temperature q ∝ p^alpha")
    train.add_argument("--max-chars", type=int, default=200_000_000, help="characters of training text")
    train.add_argument("--max-rows", type=int, default=1_000_000, help="rows read per language")
    train.add_argument("--seed", type=int, default=0)
    show = sub.add_parser("show", help="describe a tokenizer.json")
    show.add_argument("path")
    show.add_argument("--text", action="append", default=[], help="a text to encode and decode")


def _train(args: argparse.Namespace) -> int:
    if args.embedded == bool(args.input):
        raise ValueError("tokenizer train: give either --embedded or --input files, not both or neither")
    if args.embedded:
        texts = embedded_documents()
    else:
        texts = sample_texts(read_sources(args.input, options=source_options(args)), args.max_rows)
    lines = sample_training_text(texts, alpha=args.alpha, max_chars=args.max_chars, seed=args.seed)
    tokenizer = train_tokenizer(lines, args.vocab_size, progress=True)
    sha = save_tokenizer(tokenizer, args.output)
    print(f"wrote {args.output}: vocab {tokenizer.get_vocab_size()} (languages: {', '.join(sorted(texts))}), "
          f"sha256 {sha}")
    return 0


def _show(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.path)
    size = tokenizer.get_vocab_size()
    print(f"{args.path}: vocab {size}")
    for role, token_id in resolve_special_tokens(tokenizer).roles().items():
        added = "  (missing: added at the end of the vocabulary)" if token_id >= size else ""
        print(f"  {role:>6} {token_id:7d}  {tokenizer.id_to_token(token_id)}{added}")
    for text in args.text:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        print(f"{text!r}\n  {len(ids)} tokens: {ids}\n  pieces: {[tokenizer.decode([i]) for i in ids]}")
    return 0


def main(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _show(args)
