"""Preprocessing at scale (not a test): memory against input size, throughput against processes, and
importing a Megatron dataset against tokenizing the same text. Every run is a fresh
``python -m pretrain preprocess`` subprocess; peak RSS is that process's own (``wait4``).

1. Peak RSS for generated jsonl inputs of each ``--sizes`` (GB): flat memory means the same peak
   whatever the size (baseline: the smallest input).
2. tokens/s per process with 1 process and with 2 concurrent node processes (``--num-nodes 2``), each
   single-threaded (TOKENIZERS_PARALLELISM=false) on an input of ``--scale-gb`` (baseline: 1 process),
   by wall clock and per CPU-second (the CPU figure does not depend on what else the machine runs).
3. Import of the first run's tokens written as a Megatron .bin/.idx pair vs tokenizing its text.

    python -m pretrain bench preprocess_scale [--sizes 0.2 1] [--scale-gb 0.1] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pretrain.data import prepare_embedded_corpus
from pretrain.data.corpus import embedded_documents
from pretrain.data.store import open_store, read_manifest


def write_jsonl(path: Path, gigabytes: float, seed: int) -> None:
    """Documents of 1-8 embedded-corpus documents (all 22 languages), numbered so none repeats."""
    pool = [doc for docs in embedded_documents().values() for doc in docs]
    rng = np.random.default_rng(seed)
    target, written, number = int(gigabytes * 1e9), 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            picks = rng.integers(0, len(pool), size=(4096, 8))
            counts = rng.integers(1, 9, size=4096)
            lines = "".join(json.dumps({"text": f"{number + i} " + " ".join(pool[j] for j in row[:n])},
                                       ensure_ascii=False) + "\n" for i, (row, n) in enumerate(zip(picks, counts)))
            out.write(lines)
            written += len(lines.encode())
            number += 4096


def run(args: list[str], env: dict | None = None) -> subprocess.Popen:
    output = Path(args[args.index("--output") + 1])
    if "--node-rank" not in args or args[args.index("--node-rank") + 1] == "0":
        shutil.rmtree(output, ignore_errors=True)  # a finished output would be skipped, not measured
    return subprocess.Popen([sys.executable, "-m", "pretrain", "preprocess", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, started: float) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in GiB) of a preprocess process."""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"preprocess failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20


def tokens(root: Path) -> int:
    return sum(info["n_tokens"] for info in read_manifest(root)["languages"].values())


def memory(work: Path, tokenizer: Path, sizes: list[float]) -> list[str]:
    rows = ["| input | tokens | seconds | tokens/s | peak RSS | vs smallest |", "|---|---|---|---|---|---|"]
    base = None
    for index, size in enumerate(sizes):
        data = work / f"input-{size}.jsonl"
        write_jsonl(data, size, index)
        out = work / f"out-{size}"
        started = time.perf_counter()
        seconds, _, rss = finish(run(["--input", f"en={data}", "--tokenizer", str(tokenizer), "--output", str(out)]),
                                 started)
        count = tokens(out)
        base = base or rss
        rows.append(f"| {data.stat().st_size / 1e9:.2f} GB | {count:,} | {seconds:.0f} | {count / seconds:,.0f} | "
                    f"{rss:.2f} GiB | {rss / base:.2f}x |")
        print(rows[-1], flush=True)
        if index:
            data.unlink()
            shutil.rmtree(out)
    return rows


def scaling(work: Path, tokenizer: Path, gigabytes: float) -> list[str]:
    inputs = [work / f"scale-{i}.jsonl" for i in range(2)]
    for i, path in enumerate(inputs):
        write_jsonl(path, gigabytes, 100 + i)
    single = {"TOKENIZERS_PARALLELISM": "false"}
    rows = ["| processes | tokens/s per process (wall) | vs 1 | tokens per CPU-second per process | vs 1 |",
            "|---|---|---|---|---|"]
    started = time.perf_counter()
    seconds, cpu, _ = finish(run(["--input", f"en={inputs[0]}", "--tokenizer", str(tokenizer), "--output",
                                  str(work / "one")], single), started)
    one, one_cpu = tokens(work / "one") / seconds, tokens(work / "one") / cpu
    rows.append(f"| 1 | {one:,.0f} | 1.00 | {one_cpu:,.0f} | 1.00 |")
    common = ["--input", f"en={inputs[0]}", "--input", f"de={inputs[1]}", "--tokenizer", str(tokenizer),
              "--output", str(work / "two"), "--num-nodes", "2"]
    started = time.perf_counter()
    processes = [run([*common, "--node-rank", str(rank)], single) for rank in range(2)]
    times = [finish(p, started)[:2] for p in processes]
    subprocess.run([sys.executable, "-m", "pretrain", "preprocess", *common[:-2], "--finalize", "--num-nodes", "2"],
                   check=True, stdout=subprocess.DEVNULL)
    manifest = read_manifest(work / "two")["languages"]
    made = [manifest[lang]["n_tokens"] for lang in ("en", "de")]  # node r made input r
    wall = sum(n / t for n, (t, _) in zip(made, times)) / 2
    cpu = sum(n / c for n, (_, c) in zip(made, times)) / 2
    rows.append(f"| 2 (concurrent nodes) | {wall:,.0f} | {wall / one:.2f} | {cpu:,.0f} | {cpu / one_cpu:.2f} |")
    print("\n".join(rows), flush=True)
    return rows


def write_megatron(root: Path, lang: str, prefix: Path) -> None:
    """Our shards of ``lang`` as one Megatron pair (one sequence per document, eos appended like --append-eod)."""
    store = open_store(root).languages[lang]
    eos = read_manifest(root)["special_tokens"]["eos"]
    lengths = (store.doc_lengths + 1).astype(np.int32)
    with open(f"{prefix}.bin", "wb") as out:
        for doc in range(store.n_docs):
            out.write(np.append(store.document(doc), eos).astype(np.uint16).tobytes())
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64) * 2])
    with open(f"{prefix}.idx", "wb") as out:
        out.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(lengths), len(lengths) + 1))
        out.write(lengths.tobytes() + pointers.tobytes() + np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


def megatron(work: Path, tokenizer: Path, size: float) -> list[str]:
    text_root = work / f"out-{size}"
    write_megatron(text_root, "en", work / "megatron")
    started = time.perf_counter()
    seconds, _, rss = finish(run(["--input", f"en={work / 'megatron.idx'}", "--tokenizer", str(tokenizer),
                                  "--output", str(work / "imported")]), started)
    same = read_manifest(work / "imported")["fingerprint"] == read_manifest(text_root)["fingerprint"]
    count = tokens(work / "imported")
    rows = [f"| Megatron import of {count:,} tokens | {seconds:.1f} s | {count / seconds:,.0f} tokens/s | "
            f"peak RSS {rss:.2f} GiB | same shards as tokenizing: {same} |"]
    print(rows[0], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.2, 1.0], help="input sizes in GB")
    parser.add_argument("--scale-gb", type=float, default=0.1, help="input per process for the scaling run")
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--parts", default="memory,megatron,scaling", help="which measurements (megatron needs memory)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_embedded_corpus(work / "cache") / "tokenizer.json"
    print(f"work dir {work}; {os.cpu_count()} cores; load {os.getloadavg()}", flush=True)
    report = memory(work, tokenizer, sorted(args.sizes)) if "memory" in parts else []
    report += [""] + megatron(work, tokenizer, sorted(args.sizes)[0]) if "megatron" in parts else []
    report += [""] + scaling(work, tokenizer, args.scale_gb) if "scaling" in parts else []
    print("\n".join(report))
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
