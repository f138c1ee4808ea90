"""Data-pipeline benchmarks (not tests): numbers are ratios against a baseline measured in the same run.

1. Preprocessing throughput, tokens/s: our ``preprocess`` (read with datasets, tokenize, write
   checksummed shards + manifest) vs a plain ``datasets.map`` + ``tokenizer.encode_batch`` over the
   same jsonl files (tokenize only, nothing written).
2. Loader cost per micro-batch at seq 2048 with 0, 2 and 4 DataLoader workers: with a pass-through
   collator (sample assembly only: mixture lookup, window index, memmap reads) and with the GLM
   blank-infilling collator (the full per-batch cost the trainer sees).

    .venv/bin/python bench/data.py [--copies 40] [--batches 30]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import datasets
import torch

from pretrain.data import DataConfig, build_loader, glm_collator, open_data, prepare_embedded_corpus
from pretrain.data.corpus import embedded_documents
from pretrain.data.preprocess import preprocess
from pretrain.data.sources import read_sources
from pretrain.data.store import read_manifest
from pretrain.data.tokenizer import load_tokenizer
from pretrain.objectives import ObjectiveConfig, raw_length


def write_corpus(folder: Path, copies: int) -> list[str]:
    """The embedded documents repeated ``copies`` times, one jsonl file per language."""
    specs = []
    for lang, docs in embedded_documents().items():
        path = folder / f"{lang}.jsonl"
        with open(path, "w", encoding="utf-8") as out:
            for copy in range(copies):
                out.writelines(json.dumps({"text": f"{copy} {doc}"}, ensure_ascii=False) + "\n" for doc in docs)
        specs.append(f"{lang}={path}")
    return specs


def bench_preprocess(work: Path, tokenizer_path: Path, copies: int) -> list[str]:
    specs = write_corpus(work, copies)
    datasets.disable_progress_bars()
    start = time.perf_counter()
    root = preprocess(read_sources(specs), tokenizer_path, work / "out", progress=False)
    ours = time.perf_counter() - start
    tokens = sum(info["n_tokens"] for info in read_manifest(root)["languages"].values())

    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    baseline_tokens = 0
    for spec in specs:
        dataset = datasets.load_dataset("json", data_files=spec.split("=", 1)[1], split="train",
                                        cache_dir=str(work / "hf-baseline"))
        encoded = dataset.map(lambda batch: {"ids": [e.ids for e in tokenizer.encode_batch(batch["text"])]},
                              batched=True, remove_columns=["text"], keep_in_memory=True)
        baseline_tokens += sum(len(ids) for ids in encoded["ids"])
    baseline = time.perf_counter() - start
    assert baseline_tokens == tokens, (baseline_tokens, tokens)  # same work on both sides
    return ["| pipeline | tokens | seconds | tokens/s | vs baseline |", "|---|---|---|---|---|",
            f"| datasets.map + encode_batch (baseline, no output) | {tokens} | {baseline:.2f} | "
            f"{tokens / baseline:,.0f} | 1.00 |",
            f"| pretrain preprocess (shards + checksums + manifest) | {tokens} | {ours:.2f} | "
            f"{tokens / ours:,.0f} | {baseline / ours:.2f} |"]


def bench_loader(cache: Path, batches: int, micro_batch_size: int) -> list[str]:
    seq_len, objective = 2048, ObjectiveConfig(strategy="glm-10b")
    cfg = DataConfig(corpus="embedded", cache_dir=str(cache))
    build = dict(seq_len=seq_len, raw_len=raw_length(objective, seq_len), global_batch_size=micro_batch_size,
                 micro_batch_size=micro_batch_size, dp_rank=0, dp_size=1, seed=0)
    glm = glm_collator(open_data(cfg), objective, seq_len=seq_len, seed=0, global_batch_size=micro_batch_size)
    rows = [f"| collator | workers | ms per micro-batch (mbs {micro_batch_size}, seq {seq_len}) |", "|---|---|---|"]
    for name, collator in (("pass-through (sample assembly only)", list), ("GLMCollator glm-10b", glm)):
        for workers in (0, 2, 4):
            loader = build_loader(DataConfig(corpus="embedded", cache_dir=str(cache), num_workers=workers), collator, **build)
            it = iter(loader)
            for _ in range(3):  # worker start-up and first epoch index builds are not per-batch costs
                next(it)
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            rows.append(f"| {name} | {workers} | {(time.perf_counter() - start) / batches * 1e3:.2f} |")
            del it
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=40, help="embedded corpus repetitions to preprocess")
    parser.add_argument("--batches", type=int, default=30, help="timed micro-batches per loader setting")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = prepare_embedded_corpus(work / "cache")
        print("\n".join(bench_preprocess(work, corpus / "tokenizer.json", args.copies)))
        print()
        print("\n".join(bench_loader(work / "cache", args.batches, args.micro_batch_size)))
    print(f"\ncpu: {os.cpu_count()} logical cores")


if __name__ == "__main__":
    main()
