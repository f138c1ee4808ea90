"""Collator throughput: GLMCollator per preset vs. a plain-Python port of the original GLM collator.

Run: .venv/bin/python bench/collator.py [--seconds 2] [--batch 64]

Both sides get random-token documents and produce padded batches of torch tensors in one process.
Throughput (per CPU second, best of 5 windows) counts raw text tokens consumed per second (the
work of turning text into rows) and, for GLMCollator, also row tokens (batch * seq_len) per
second. The baseline is measured in the same run so the ratio does not depend on the machine.
"""
from __future__ import annotations

import argparse
import platform
import random
import subprocess
import time

import numpy as np
import torch
from scipy.stats import poisson

from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample
from pretrain.tokens import SpecialTokens

SPECIAL = SpecialTokens()
VOCAB = 50_000


class OriginalTokenMode:
    """THUDM/GLM ``ConstructBlockStrategy.construct_blocks`` in bert mode (reference §2.1, 2.2, 2.5,
    2.8): python lists, ``random.Random`` per call, numpy for positions, per-sample layout, padding."""

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
        indices = [-1] + np.where(tokens == SPECIAL.eos)[0].tolist()
        last_index, documents = len(tokens), []
        for index in reversed(indices):
            start_index = index
            if start_index + 1 < len(tokens) and tokens[start_index + 1] == SPECIAL.cls:
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
            target_tokens.append([SPECIAL.sop])
            span_tokens = tokens[start:end].tolist()
            target_tokens.append(span_tokens)
            targets.append(span_tokens + [SPECIAL.eop])
            target_positions.append([position_ids[start]] * (end - start + 1))
            block_positions.append(list(range(1, end - start + 2)))
        spans.sort(key=lambda x: x[0])
        source_tokens, source_positions, last = [], [], 0
        for start, end in spans:
            source_tokens.append(tokens[last:start])
            source_tokens.append([SPECIAL.mask])
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
    """Calls per CPU second of each step: best of ``repeats`` windows, the steps interleaved window
    by window. CPU time of this process (not wall time) so that other processes taking the cores
    of a shared machine do not count; the interleaving spreads what remains (caches, memory
    bandwidth) over all steps alike."""
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


def samples_for(collator: GLMCollator, batch: int, batch_index: int, rng) -> list[TextSample]:
    """One whole document per row, cls ... eos, filling raw_length (as the data side cuts windows)."""
    body = collator.raw_length - 2
    return [TextSample(batch_index * batch + i, [np.r_[SPECIAL.cls, rng.integers(8, VOCAB, body), SPECIAL.eos]])
            for i in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per collator and seq_len")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1]
    print(f"machine: {cpu.strip()}, python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__}, batch {args.batch}, one process\n")
    print("| seq_len | collator | raw tokens/row | M raw tok/s | M row tok/s | vs original |")
    print("|---|---|---|---|---|---|")
    for seq_len in (512, 2048):
        original = OriginalTokenMode(seq_len)
        texts = [np.r_[SPECIAL.cls, rng.integers(8, VOCAB, seq_len - 2), SPECIAL.eos] for _ in range(args.batch)]
        steps, raw = {"original": lambda: original(texts)}, {"original": seq_len}
        for strategy in ("glm", "glm-10b", "glm-130b", "causal"):
            collator = GLMCollator(ObjectiveConfig(strategy=strategy), SPECIAL, seq_len, seed=0,
                                   global_batch_size=args.batch,
                                   sentence_end_ids=np.arange(8, VOCAB, 20))  # ~5% of ids end a sentence
            batches = [samples_for(collator, args.batch, i, rng) for i in range(8)]  # 8 mixture draws
            counter = iter(range(10 ** 9))
            steps[strategy] = lambda c=collator, b=batches, n=counter: c(b[next(n) % 8])
            raw[strategy] = collator.raw_length
        rates = best_rates(steps, args.seconds * len(steps))
        base = rates["original"] * args.batch * seq_len
        print(f"| {seq_len} | original GLM token mode (python port) | {seq_len} | {base / 1e6:.2f} | "
              f"{base / 1e6:.2f} (unpadded) | 1.0x |")
        for strategy in ("glm", "glm-10b", "glm-130b", "causal"):
            ours = rates[strategy] * args.batch * raw[strategy]
            print(f"| {seq_len} | GLMCollator {strategy} | {raw[strategy]} | {ours / 1e6:.2f} | "
                  f"{rates[strategy] * args.batch * seq_len / 1e6:.2f} | {ours / base:.1f}x |")


if __name__ == "__main__":
    main()
