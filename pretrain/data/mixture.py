"""Multilingual mixture: q_l ∝ p_l^alpha, explicit overrides, epoch caps, and a periodic exact blend.

The blend is a pattern of ``block`` slots holding exactly ``counts[l]`` samples of language l
(largest-remainder rounding of q_l * block), spread evenly by a key merge (slot j of language l sits
at key (j + 0.5) / counts[l]). Global sample id g maps in O(1) to (language, k-th sample of that
language): block g // block, slot g % block. Nothing depends on the run length.

Epoch caps (UniMax): right after a language has used exactly floor(max_epochs * samples_per_epoch)
samples, a new segment starts in which its share is redistributed over the remaining languages. If every
language is capped the stream is finite (``total_samples``).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np


def language_seed(lang: str) -> int:
    """A stable 64-bit integer per language for seeding (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(lang.encode("utf-8")).digest()[:8], "little")


def temperature_weights(sizes: Mapping[str, float], alpha: float) -> dict[str, float]:
    total = float(sum(sizes.values()))
    if total <= 0:
        raise ValueError(f"cannot weight languages {sorted(sizes)}: they hold no data")
    powered = {lang: (size / total) ** alpha for lang, size in sizes.items() if size > 0}
    norm = sum(powered.values())
    return {lang: powered[lang] / norm for lang in sorted(powered)}


def mixture_weights(tokens: Mapping[str, int], alpha: float, overrides: Mapping[str, float]) -> dict[str, float]:
    """Final q per language: explicit overrides as given, the rest share the remainder by temperature."""
    missing = sorted(set(overrides) - set(tokens))
    if missing:
        raise ValueError(f"mixture weight given for language(s) {missing} that have no data; "
                         f"languages with data: {sorted(tokens)}")
    free = {lang: n for lang, n in tokens.items() if lang not in overrides}
    rest = 1.0 - sum(overrides.values())
    if not free:
        if abs(rest) > 1e-6:
            raise ValueError(f"weights cover every language but sum to {1 - rest}; they must sum to 1")
        return dict(sorted(overrides.items()))
    if rest <= 1e-12:
        raise ValueError(f"weights sum to 1 but languages {sorted(free)} have no weight left; "
                         f"give them explicit weights (0 excludes a language)")
    weights = {lang: rest * q for lang, q in temperature_weights(free, alpha).items()}
    weights.update(overrides)
    return dict(sorted(weights.items()))


@dataclass(frozen=True)
class BlendSegment:
    start: int                # first global sample id of this segment
    counts: np.ndarray        # [L] samples of each language per block
    base: np.ndarray          # [L] samples of each language used before this segment
    slot_language: np.ndarray  # [block] language index of each slot
    slot_local: np.ndarray     # [block] rank of the slot among its language's slots


def block_counts(weights: np.ndarray, block: int, languages: list[str]) -> np.ndarray:
    exact = weights * block
    counts = np.floor(exact).astype(np.int64)
    leftover = block - int(counts.sum())
    # Largest fractional parts get the leftover slots; ties go to the lower language index.
    order = np.lexsort((np.arange(len(weights)), -(exact - counts)))
    counts[order[:leftover]] += 1
    starved = [languages[i] for i in np.flatnonzero((weights > 0) & (counts == 0))]
    if starved:
        smallest = float(weights[weights > 0].min())
        raise ValueError(f"languages {starved} get 0 of blend_block={block} slots at their weight; "
                         f"raise data.blend_block to at least {math.ceil(1 / smallest)}")
    return counts


def blend_pattern(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    languages = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    local = np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
    keys = (local + 0.5) / np.repeat(np.maximum(counts, 1), counts)
    order = np.lexsort((languages, keys))
    return languages[order], local[order]


class Mixture:
    def __init__(self, weights: Mapping[str, float], samples_per_epoch: Mapping[str, int],
                 max_epochs: Mapping[str, float], block: int):
        self.languages = sorted(weights)
        unknown = sorted(set(max_epochs) - set(self.languages))
        if unknown:
            raise ValueError(f"max_epochs given for language(s) {unknown} that have no data; "
                             f"languages with data: {self.languages}")
        self.weights = {lang: float(weights[lang]) for lang in self.languages}
        self.samples_per_epoch = {lang: int(samples_per_epoch[lang]) for lang in self.languages}
        self.max_epochs = dict(sorted(max_epochs.items()))
        self.block = block
        self.segments: list[BlendSegment] = []
        self.total_samples: int | None = None
        self._build()
        self._starts = [segment.start for segment in self.segments]

    def _build(self) -> None:
        q = np.array([self.weights[lang] for lang in self.languages])
        caps = np.array([math.floor(self.max_epochs[lang] * self.samples_per_epoch[lang])
                         if lang in self.max_epochs else -1 for lang in self.languages], dtype=np.int64)
        active = (q > 0) & (caps != 0)
        used = np.zeros(len(q), dtype=np.int64)
        start = 0
        while active.any():
            counts = block_counts(np.where(active, q, 0) / q[active].sum(), self.block, self.languages)
            slot_language, slot_local = blend_pattern(counts)
            self.segments.append(BlendSegment(start, counts, used.copy(), slot_language, slot_local))
            capped = np.flatnonzero(active & (caps >= 0))
            if not len(capped):
                return
            # the segment ends right after the slot that takes some language's last allowed sample
            length = min(self._end_of(int(lang), int(caps[lang] - used[lang]), counts, slot_language,
                                      slot_local) for lang in capped)
            blocks, rest = divmod(length, self.block)
            used += blocks * counts + np.bincount(slot_language[:rest], minlength=len(q))
            start += length
            active &= used != caps
        self.total_samples = start

    def _end_of(self, lang: int, remaining: int, counts: np.ndarray, slot_language: np.ndarray,
                slot_local: np.ndarray) -> int:
        """Samples into a segment up to and including the slot of ``lang``'s ``remaining``-th sample."""
        block, local = divmod(remaining - 1, int(counts[lang]))
        slot = int(np.flatnonzero((slot_language == lang) & (slot_local == local))[0])
        return block * self.block + slot + 1

    def locate(self, sample_id: int) -> tuple[int, int]:
        """Global sample id -> (language index, k-th sample of that language)."""
        if sample_id < 0 or (self.total_samples is not None and sample_id >= self.total_samples):
            raise IndexError(f"sample id {sample_id} is past the end of the data: every language reached "
                             f"its max_epochs cap after {self.total_samples} samples; raise data.max_epochs")
        segment = self.segments[bisect.bisect_right(self._starts, sample_id) - 1]
        block, slot = divmod(sample_id - segment.start, self.block)
        lang = int(segment.slot_language[slot])
        return lang, int(segment.base[lang] + block * segment.counts[lang] + segment.slot_local[slot])

    def used_before(self, sample_id: int) -> dict[str, int]:
        """Samples of each language among global ids [0, sample_id)."""
        segment = self.segments[bisect.bisect_right(self._starts, sample_id) - 1]
        blocks, rest = divmod(sample_id - segment.start, self.block)
        used = segment.base + blocks * segment.counts + np.bincount(segment.slot_language[:rest],
                                                                    minlength=len(self.languages))
        return {lang: int(n) for lang, n in zip(self.languages, used)}

    def describe(self) -> dict:
        return {"weights": self.weights, "max_epochs": self.max_epochs, "block": self.block,
                "samples_per_epoch": self.samples_per_epoch, "total_samples": self.total_samples,
                "segments": [[s.start, s.counts.tolist()] for s in self.segments]}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]
