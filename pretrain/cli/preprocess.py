"""``python -m pretrain preprocess``: tokenize local corpora once into per-language checksummed shards."""
from __future__ import annotations

import argparse
import os

from pretrain.data.preprocess import DEFAULT_SHARD_DOCUMENTS, preprocess
from pretrain.data.sources import read_sources
from pretrain.data.store import read_manifest
from pretrain.cli.tokenizer import add_source_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--tokenizer", required=True,
                        help="a tokenizer.json (see `python -m pretrain tokenizer`) or a local transformers "
                             "tokenizer directory (its fast tokenizer)")
    parser.add_argument("--output", required=True, help="output directory (manifest.json + shards)")
    parser.add_argument("--shard-documents", type=int, default=DEFAULT_SHARD_DOCUMENTS,
                        help="input rows per shard (shards are the unit a re-run skips)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="tokenizer processes (default: one process, tokenizers' own threads)")


def main(args: argparse.Namespace) -> int:
    if not args.input:
        raise ValueError("give at least one --input [LANG=]PATH")
    if args.num_proc and args.num_proc > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked workers must not share Rust thread pools
    sources = read_sources(args.input, text_column=args.text_column, lang_column=args.lang_column,
                           sample_by=args.sample_by)
    root = preprocess(sources, args.tokenizer, args.output, text_column=args.text_column,
                      shard_documents=args.shard_documents, num_proc=args.num_proc)
    manifest = read_manifest(root)
    for lang, info in manifest["languages"].items():
        print(f"{lang:>8}: {info['n_docs']} documents, {info['n_tokens']} tokens, "
              f"{info['skipped_empty_documents']} empty documents skipped, {len(info['shards'])} shard(s)")
    for lang, info in manifest["empty_languages"].items():
        print(f"{lang:>8}: EMPTY, skipped ({info['skipped_empty_documents']} empty documents, "
              f"empty files: {info['empty_files']})")
    print(f"wrote {root} (fingerprint {manifest['fingerprint']})")
    return 0
