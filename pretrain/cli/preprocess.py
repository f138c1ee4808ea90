"""``python -m pretrain preprocess``: tokenize corpora once into per-entry checksummed shards, on one node
or many (``--num-nodes/--node-rank``, a Slurm array or torchrun, then ``--finalize``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pretrain.cli.tokenizer import add_source_arguments, source_options
from pretrain.data.instruct import TURNS, InstructionFormat
from pretrain.data.nodes import resolve_node
from pretrain.data.preprocess import DEFAULT_SHARD_DOCUMENTS, Setup, finalize, run_node
from pretrain.data.sources import read_sources
from pretrain.data.store import read_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    defaults = InstructionFormat()
    instruct = parser.add_argument_group("instruction sources (each one is an entry of the mixture)")
    instruct.add_argument("--instruct", action="append", default=[], metavar="NAME=LOCATION",
                          help="(prompt, response) or chat records, any location --input takes; repeatable")
    instruct.add_argument("--prompt-field", action="append", dest="prompt_fields", metavar="FIELD",
                          help=f"prompt field(s), joined by a blank line (default {defaults.prompt_fields[0]!r})")
    instruct.add_argument("--response-field", default=defaults.response_field)
    instruct.add_argument("--messages-field", default=defaults.messages_field,
                          help="chat records: a list of {role, content} turns")
    instruct.add_argument("--assistant-role", default=defaults.assistant_role)
    instruct.add_argument("--turn-template", default=defaults.turn_template,
                          help="how a chat turn is rendered into the prompt ({role}, {content})")
    instruct.add_argument("--turns", default=defaults.turns, choices=TURNS,
                          help="chats: one sample per assistant turn, or the last reply only")
    parser.add_argument("--tokenizer", required=True,
                        help="a tokenizer.json (see `python -m pretrain tokenizer`) or a local transformers "
                             "tokenizer directory (its fast tokenizer)")
    parser.add_argument("--output", required=True, help="output directory (manifest.json + shards)")
    parser.add_argument("--shard-documents", type=int, default=DEFAULT_SHARD_DOCUMENTS,
                        help="input rows per shard (shards are the unit a re-run skips)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="processes on this node, each tokenizing whole inputs (default: one process, "
                             "tokenizers' own threads)")
    nodes = parser.add_argument_group("many nodes (default: SLURM_ARRAY_TASK_ID/COUNT, else RANK/WORLD_SIZE)")
    nodes.add_argument("--num-nodes", type=int, help="nodes sharing the inputs")
    nodes.add_argument("--node-rank", type=int, help="this node, 0 <= rank < num-nodes")
    nodes.add_argument("--finalize", action="store_true",
                       help="after every node is done: check their shards and write the manifest")
    parser.add_argument("--dedup", action="store_true",
                        help="drop exact duplicate documents of an entry, keeping the first (applied when the "
                             "manifest is written; duplicates are always counted)")


def _summary(root: Path) -> None:
    manifest = read_manifest(root)
    for lang, info in manifest["languages"].items():
        kind = " (instruction)" if info["kind"] == "instruction" else ""
        dropped = ", dropped" if info["dropped_duplicate_documents"] else ""
        print(f"{lang:>8}: {info['n_docs']} documents{kind}, {info['n_tokens']} tokens, "
              f"{info['skipped_empty_documents']} empty documents skipped, "
              f"{info['duplicate_documents']} exact duplicates{dropped}, {len(info['shards'])} shard(s)")
    for lang, info in manifest["empty_languages"].items():
        print(f"{lang:>8}: EMPTY, skipped ({info['skipped_empty_documents']} empty documents, "
              f"empty files: {info['empty_files']})")
    if manifest["empty_files_without_language"]:
        print(f"empty files (no rows, so no language): {manifest['empty_files_without_language']}")
    print(f"wrote {root} (fingerprint {manifest['fingerprint']})")


def main(args: argparse.Namespace) -> int:
    if not args.input and not args.instruct:
        raise ValueError("give at least one --input [LANG=]LOCATION or --instruct NAME=LOCATION")
    if args.num_proc and args.num_proc > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # worker processes must not share Rust thread pools
    instruction = InstructionFormat(prompt_fields=tuple(args.prompt_fields or InstructionFormat().prompt_fields),
                                    response_field=args.response_field, messages_field=args.messages_field,
                                    assistant_role=args.assistant_role, turn_template=args.turn_template,
                                    turns=args.turns)
    plan = read_sources(args.input, instruct=args.instruct, options=source_options(args, instruction=instruction))
    num_nodes, node_rank = resolve_node(args.num_nodes, 0 if args.finalize and args.num_nodes else args.node_rank)
    setup = Setup(Path(args.output), args.tokenizer, args.shard_documents, plan.options)
    if not args.finalize:
        done = run_node(plan, setup, num_nodes=num_nodes, node_rank=node_rank, num_proc=args.num_proc)
        if num_nodes > 1:
            print(f"node {node_rank} of {num_nodes}: its share is done ({len(done)} of the {len(plan.inputs)} inputs); "
                  f"when every node is done, run the same command with --finalize --num-nodes {num_nodes}")
            return 0
    _summary(finalize(plan, setup, dedup=args.dedup, num_nodes=num_nodes))
    return 0
