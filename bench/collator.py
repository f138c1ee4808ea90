"""Collator throughput: GLMCollator per strategy against the ORIGINAL GLM collator (THUDM/GLM
``ConstructBlockStrategy.construct_blocks``, run as is through bench/glm_original.py) and a plain-Python
port of it, all in one process, timing windows interleaved.

Run: .venv/bin/python bench/collator.py --original PATH [--seconds 1] [--batch 8 16] [--seq-len 512 2048]

PATH is THUDM/GLM's blocklm_utils.py, a checkout holding it or a (bare) clone of
https://github.com/THUDM/GLM (env GLM_ORIGINAL works too); without it the original is skipped (said so)
and only the port is measured. The original's code is not part of this repository.

Every contender gets one document per row (``cls ... eos``) of random token ids (vocabulary 50k, 5 %
of the ids end a sentence: the original sees '.' in their token text, ours gets them as sentence-end
ids) and returns the padded batch as torch tensors. The original and the port take ``seq_len`` text
tokens per row (their rows grow past seq_len by Part B), ours ``raw_length`` (what leaves room for Part
B), so rates are raw text tokens consumed per CPU second (and, for ours, row tokens = batch x seq_len).
Rates: best of 5 windows per contender, windows interleaved, CPU time of this process (a shared
machine's other jobs do not count; what they leave, caches and memory bandwidth, hits all alike).
GLM's own strategies (token, sentence, document, the glm-10b mixture) are compared with the original
configured the same way; the others, which GLM never had, with our token strategy.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import poisson

from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample, declared_special_tokens
from pretrain.tokens import SpecialTokens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glm_original import GLM_MODES, load_module, original_collator  # noqa: E402  (bench/ is no package)

BASE = SpecialTokens()
VOCAB = 50_000
SENTENCE_ENDS = np.arange(8, VOCAB, 20)  # ~5% of ids end a sentence
OURS = ("token", "sentence", "document", "glm-10b", "glm-130b", "causal", "t5", "ul2", "fim", "prefix_lm", "mlm")


class PortedTokenMode:
    """A plain-Python port of THUDM/GLM ``construct_blocks`` in bert (token) mode (reference §2.1, 2.2,
    2.5, 2.8): python lists, ``random.Random`` per call, numpy for positions, per-sample layout,
    padding; rows stacked with ``np.stack`` before ``torch.tensor`` (faster than the original's list)."""

    def __init__(self, seq_len: int, ratio: float = 0.15, average_length: int = 3, max_length: int = 40):
        self.seq_len, self.ratio = seq_len, ratio
        self.length_weights = [poisson.pmf(i, average_length) for i in range(1, max_length)]
        self.count = 0

    @staticmethod
    def sample_spans(span_lengths, total_length, rng, offset=0):
        blank_length = total_length - sum(span_lengths)
        m = blank_length - len(span_lengths) + 1
        places = sorted(rng.randrange(m + 1) for _ in range(len(span_lengths)))
        spans = []
        for place, span_length in zip(places, span_lengths):
            spans.append((offset + place, offset + place + span_length))
            offset += span_length + 1
        return spans

    def sample_span_in_document(self, tokens, masked_lengths, rng):
        rng.shuffle(masked_lengths)
        indices = [-1] + np.where(tokens == BASE.eos)[0].tolist()
        last_index, documents = len(tokens), []
        for index in reversed(indices):
            start_index = index
            if start_index + 1 < len(tokens) and tokens[start_index + 1] == BASE.cls:
                start_index += 1
            length = last_index - start_index - 1
            if last_index == len(tokens) and length > 0:
                length -= 1
            documents.append((start_index + 1, length))
            last_index = index
        documents.sort(key=lambda x: x[1])
        mask_spans, mask_index = [], 0
        for i, (offset, length) in enumerate(documents):
            longest = i == len(documents) - 1
            budget = length if longest else int(length * self.ratio)
            used, count = 0, 0
            while mask_index + count < len(masked_lengths):
                span = masked_lengths[mask_index + count]
                if (span + used + count > budget) if longest else (used + span > budget):
                    break
                used, count = used + span, count + 1
            if count:
                mask_spans += self.sample_spans(masked_lengths[mask_index:mask_index + count], length, rng, offset)
            mask_index += count
        return mask_spans

    def make_block_data(self, tokens, spans, rng):
        position_ids = np.ones(len(tokens), dtype=np.int64)
        for start, end in spans:
            position_ids[start + 1:end] = 0
        position_ids = np.cumsum(position_ids) - 1
        rng.shuffle(spans)
        target_tokens, target_positions, block_positions, targets = [], [], [], []
        for start, end in spans:
            target_tokens.append([BASE.sop])
            span_tokens = tokens[start:end].tolist()
            target_tokens.append(span_tokens)
            targets.append(span_tokens + [BASE.eop])
            target_positions.append([position_ids[start]] * (end - start + 1))
            block_positions.append(list(range(1, end - start + 2)))
        spans.sort(key=lambda x: x[0])
        source_tokens, source_positions, last = [], [], 0
        for start, end in spans:
            source_tokens.append(tokens[last:start])
            source_tokens.append([BASE.mask])
            source_positions.append(position_ids[last:start])
            source_positions.append([position_ids[start]])
            last = end
        source_tokens.append(tokens[last:])
        source_positions.append(position_ids[last:])
        sep = sum(len(t) for t in source_tokens)
        tokens = np.concatenate(source_tokens + target_tokens)
        targets = np.concatenate(source_tokens + targets)
        loss_masks = np.ones(len(tokens), dtype=np.int64)
        loss_masks[:sep] = 0
        position_ids = np.concatenate(source_positions + target_positions)
        block_ids = np.concatenate([np.zeros(sep, dtype=np.int64)] + [np.array(b) for b in block_positions])
        return tokens, targets, loss_masks, np.stack([position_ids, block_ids]), sep

    def __call__(self, texts: list[np.ndarray]):
        rng = random.Random(self.count)
        self.count += 1
        rows = []
        for text in texts:
            lengths, masked = [], 0
            while masked < int(self.ratio * len(text)):
                length = rng.choices(range(1, len(self.length_weights) + 1), self.length_weights)[0]
                lengths.append(length)
                masked += length
            spans = self.sample_span_in_document(text, lengths, rng)
            if len(spans) == len(lengths):
                rows.append(self.make_block_data(text, spans, rng))
        width = max(len(r[0]) for r in rows)
        pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])])
        return {"text": torch.tensor(np.stack([pad(r[0]) for r in rows])),
                "target": torch.tensor(np.stack([pad(r[1]) for r in rows])),
                "loss_mask": torch.tensor(np.stack([pad(r[2]) for r in rows])),
                "position_id": torch.tensor(np.stack([pad(r[3]) for r in rows])),
                "attention_mask": torch.tensor([r[4] for r in rows])}


def best_rates(steps: dict, seconds: float, repeats: int = 5) -> dict:
    """Calls per CPU second of each step: best of ``repeats`` windows, the steps interleaved window by
    window. CPU time of this process (not wall time) so that other processes taking the cores of a
    shared machine do not count; the interleaving spreads what remains over all steps alike."""
    for step in steps.values():
        step()  # warm-up
    best = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            calls, start = 0, time.process_time()
            while time.process_time() - start < seconds / repeats:
                step()
                calls += 1
            best[name] = max(best[name], calls / (time.process_time() - start))
    return best


def our_collator(strategy: str, seq_len: int, batch: int) -> GLMCollator:
    """Our collator for ``strategy`` with the roles it declares placed after the bench's vocabulary."""
    cfg = ObjectiveConfig(strategy=strategy)
    extra = {role: VOCAB + i for i, role in enumerate(declared_special_tokens(cfg))}
    special = SpecialTokens(extra=extra)
    return GLMCollator(cfg, special, seq_len, seed=0, global_batch_size=batch, sentence_end_ids=SENTENCE_ENDS,
                       vocab_size=VOCAB + len(extra))


def samples_for(collator: GLMCollator, batch: int, batch_index: int, rng) -> list[TextSample]:
    """One whole document per row, cls ... eos, filling raw_length (as the data side cuts windows)."""
    body = collator.raw_length - 2
    return [TextSample(batch_index * batch + i, [np.r_[BASE.cls, rng.integers(8, VOCAB, body), BASE.eos]])
            for i in range(batch)]


def measure(seq_len: int, batch: int, seconds: float, module, rng) -> list[str]:
    """Markdown rows for one (seq_len, batch)."""
    texts = [[np.r_[BASE.cls, rng.integers(8, VOCAB, seq_len - 2), BASE.eos] for _ in range(batch)]
             for _ in range(8)]
    counter = iter(range(10 ** 12))
    steps, raw = {}, {}
    port = PortedTokenMode(seq_len)
    steps["port"], raw["port"] = (lambda: port(texts[next(counter) % 8])), seq_len
    for mode in GLM_MODES if module is not None else ():
        original = original_collator(module, mode, BASE, seq_len, VOCAB, SENTENCE_ENDS)
        steps[f"original {mode}"] = lambda c=original: c(texts[next(counter) % 8])
        raw[f"original {mode}"] = seq_len
    for strategy in OURS:
        collator = our_collator(strategy, seq_len, batch)
        batches = [samples_for(collator, batch, i, rng) for i in range(8)]  # 8 mixture draws
        steps[strategy] = lambda c=collator, b=batches: c(b[next(counter) % 8])
        raw[strategy] = collator.raw_length
    rates = best_rates(steps, seconds * len(steps))
    raw_rate = {name: rates[name] * batch * raw[name] for name in steps}  # raw tokens per CPU second
    rows = []
    for name in ("port", *(f"original {m}" for m in GLM_MODES if module is not None)):
        versus = f"{raw_rate[name] / raw_rate['original token']:.2f}x" if module is not None else "-"
        rows.append(f"| {seq_len} | {batch} | {name} | {seq_len} | {raw_rate[name] / 1e6:.2f} | - | {versus} |")
    for strategy in OURS:
        against = f"original {strategy}" if strategy in GLM_MODES else "token"
        if against not in raw_rate:
            against = "port" if strategy == "token" else "token"
        label = {"token": "our token", "port": "port (token)"}.get(against, against)
        rows.append(f"| {seq_len} | {batch} | **ours {strategy}** | {raw[strategy]} | {raw_rate[strategy] / 1e6:.2f} "
                    f"| {rates[strategy] * batch * seq_len / 1e6:.2f} | **{raw_rate[strategy] / raw_rate[against]:.1f}x** "
                    f"{label} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", default=os.environ.get("GLM_ORIGINAL"),
                        help="THUDM/GLM blocklm_utils.py, a checkout or a bare clone (default: $GLM_ORIGINAL)")
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per contender and configuration")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16], help="micro-batch sizes")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[512, 2048])
    args = parser.parse_args()
    module = None
    if args.original:
        module = load_module(Path(args.original))
    else:
        print("original GLM code not given (--original PATH or GLM_ORIGINAL: THUDM/GLM's blocklm_utils.py, a "
              "checkout or a bare clone of https://github.com/THUDM/GLM): skipping it, ratios against the "
              "port only\n")
    warnings.filterwarnings("ignore", message="Creating a tensor from a list of numpy.ndarrays")  # the original's
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1]
    print(f"machine: {cpu.strip()}, {os.cpu_count()} cores, python {platform.python_version()}, numpy "
          f"{np.__version__}, torch {torch.__version__}, one process; load average {os.getloadavg()[0]:.1f}\n")
    print("| seq_len | batch | collator | raw tokens/row | M raw tok/s | M row tok/s | vs |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        for seq_len in args.seq_len:
            print("\n".join(measure(seq_len, batch, args.seconds, module, rng)), flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
