"""``DataConfig``: the ``data`` section of a run config (where the tokens are and how they are mixed)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    # A preprocessed directory (manifest.json + tokenizer.json, see `python -m pretrain preprocess`).
    path: str | None = None
    # The tokenizer the run uses (a tokenizer.json or a transformers tokenizer directory); null: the copy in
    # the data directory. It must be the one the data was preprocessed with (same tokenizer fingerprint).
    tokenizer: str | None = None
    # Instead of path: "embedded" = the built-in multilingual corpus (mimesis text), built under cache_dir.
    corpus: Literal["embedded"] | None = None
    # The embedded corpus and the per-epoch shuffle index cache (<cache_dir>/index).
    cache_dir: str = "runs/_data"
    # Language weights q_l ∝ p_l^alpha over training tokens (XLM-R / mT5 use 0.3).
    alpha: float = 0.3
    # Explicit mixture fractions for some languages; the others share the rest by temperature.
    weights: dict[str, float] = field(default_factory=dict)
    # UniMax-style caps: a language stops after this many passes over its data; its share is
    # redistributed over the languages still running.
    max_epochs: dict[str, float] = field(default_factory=dict)
    num_workers: int = 2  # DataLoader worker processes per rank (0: load in the training process)
    # Slots in one periodic blend block; every block holds each language's exact count.
    blend_block: int = 8192
    # Documents per language held out from training and used by split="valid".
    eval_documents: int = 4
    # Hash each shard's tokens against the manifest once (recorded in <path>/verified.json, or under
    # cache_dir/verified when path is read-only); sizes and the small offset files are checked at every start.
    verify_checksums: bool = True
    embedded_vocab_size: int = 2048  # BPE vocabulary of the embedded corpus's tokenizer
    # Role -> token string, for a tokenizer that names a special token differently (e.g. {cls: "<s>"});
    # roles not given are looked up by their usual names and added to the vocabulary when missing.
    special_tokens: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.path is not None and self.corpus is not None:
            raise ValueError(f"path={self.path!r} and corpus={self.corpus!r} both name the data; keep one")
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha <= 1.0):
            raise ValueError(f"alpha={self.alpha} must be in (0, 1] (1 = proportional to data, 0.3 = XLM-R)")
        for lang, weight in self.weights.items():
            if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
                raise ValueError(f"weights.{lang}={weight} must be a fraction in [0, 1]")
        if sum(self.weights.values()) > 1.0 + 1e-9:
            raise ValueError(f"weights sum to {sum(self.weights.values())} > 1; they are fractions of the mixture")
        for lang, cap in self.max_epochs.items():
            if not (math.isfinite(cap) and cap > 0):
                raise ValueError(f"max_epochs.{lang}={cap} must be a positive number of epochs")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0")
        if self.blend_block < 1:
            raise ValueError(f"blend_block={self.blend_block} must be >= 1")
        if self.eval_documents < 0:
            raise ValueError(f"eval_documents={self.eval_documents} must be >= 0")
        if self.embedded_vocab_size < 512:
            raise ValueError(f"embedded_vocab_size={self.embedded_vocab_size} must be >= 512 "
                             f"(256 byte tokens + specials + merges)")
