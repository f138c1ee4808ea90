"""What a masking strategy is, and the registry that finds one by name.

A strategy is one class in one file of this package, registered with ``@register("name")``. It owns:
its typed sub-config (``Config``, a dataclass with a ``validate()``; YAML ``objective.<name>:``), its
random streams (``self.stream(purpose)``: ids derived from its name), the special tokens it needs
beyond the core roles (``special_tokens``, ``{role: token string}``, found or added by role), how much
room Part B needs per row (``room``), and ``spans(docs)``: the spans of a batch of documents, with a
mask id per span (``infill.Spans``; [gMASK]-role spans through ``gmask_spans``). Nothing else in the code base names strategies; adding one is a
file here, a YAML and its tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import Spans
from pretrain.objectives.spans import Documents, length_cdf
from pretrain.tokens import SpecialTokens

STRATEGIES: dict[str, type["Strategy"]] = {}
N_SENTINELS = 100  # T5's extra_ids: <extra_id_0> .. <extra_id_99>, reused cyclically past 100 spans
SENTINELS = {f"sentinel_{k}": f"<extra_id_{k}>" for k in range(N_SENTINELS)}


def register(name: str):
    """Class decorator: make the strategy available as ``objective.strategy: name``."""
    def add(cls: type["Strategy"]) -> type["Strategy"]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is registered twice ({STRATEGIES[name].__module__}, {cls.__module__})")
        cls.name = name
        STRATEGIES[name] = cls
        return cls
    return add


@dataclass
class NoOptions:
    """This strategy has no options."""

    def validate(self) -> None:
        pass


@dataclass
class Context:
    """What a strategy may need from the data beyond its config."""
    special: SpecialTokens
    sentence_end_ids: np.ndarray | None = None  # token ids that end a sentence (sentence_end_ids())
    vocab_size: int | None = None               # for random replacement ids (MLM)


class Strategy:
    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    special_tokens: ClassVar[dict[str, str]] = {}  # roles beyond tokens.CORE_ROLES
    streams: ClassVar[dict[str, int]] = {}          # purpose -> fixed stream id (only where outputs predate names)

    def __init__(self, cfg, context: Context):
        self.cfg, self.special = cfg, context.special

    @classmethod
    def declared_tokens(cls, cfg) -> dict[str, str]:
        """The special-token roles this strategy needs under ``cfg`` (the class's by default)."""
        return dict(cls.special_tokens)

    @classmethod
    def room(cls, cfg, n_tokens: int) -> int:
        """Tokens to reserve so that a row of ``n_tokens`` raw tokens still fits after layout (a
        generous bound: a row that still overflows loses its last spans, counted)."""
        raise NotImplementedError

    def stream(self, purpose: str) -> int:
        return self.streams.get(purpose) or rng.stream_id(self.name, purpose)

    def spans(self, docs: Documents) -> tuple[Spans, int]:
        """The spans of ``docs`` sorted by start, and how many documents had to drop spans that did not fit."""
        raise NotImplementedError

    def spans_for(self, document, seed: int, sample_id: int = 0) -> list[tuple[int, int]]:
        """Spans of one document (a cut piece starts with cls / ends with eos if it is a whole one)."""
        doc = np.asarray(document, dtype=np.int64)
        if doc.ndim != 1 or len(doc) == 0:
            raise ValueError(f"document must be a non-empty 1-D token array, got shape {doc.shape}")
        docs = Documents.from_rows([[doc]], rng.keys(seed, [sample_id]), self.special.cls)
        if docs.maskable[0] < 1:
            raise ValueError(f"document {doc.tolist()[:8]} of length {len(doc)} has no maskable token "
                             f"(cls and the last token are never masked); {self.name} needs at least one")
        spans, _ = self.spans(docs)
        return list(zip(spans.start.tolist(), spans.end.tolist()))

    def sentinel_ids(self) -> np.ndarray:
        """Ids of <extra_id_0> ... in order (the strategy must declare SENTINELS)."""
        return np.array([self.special[role] for role in SENTINELS], dtype=np.int64)


def gmask_spans(start: np.ndarray, end: np.ndarray, gmask_id: int) -> Spans:
    """[gMASK]-role spans (generation of long text: a suffix, a long infill, a response): one [gMASK]
    each in Part A, their blocks marked to prolong the text's positions (kept under
    objective.gmask_positions=continue, GLM-130B's 1-D scheme; dropped by the collator under mask)."""
    return Spans(start, end, np.full(len(start), gmask_id), prolong=np.ones(len(start), dtype=bool))


def renewal_room(rate: float, poisson_lambda: float, max_length: int, n_tokens: int) -> int:
    """Room for Part B when spans of Poisson lengths cover ``rate`` of the tokens: 2 tokens per span,
    the renewal count for target t (mean about t/mu + 1, sd sqrt(t var / mu^3)), 3 sd and 1 spare."""
    cdf = length_cdf(poisson_lambda, max_length)
    pmf = np.diff(np.r_[0.0, cdf])
    k = np.arange(1, len(pmf) + 1)
    mu, var = float(pmf @ k), float(pmf @ k ** 2) - float(pmf @ k) ** 2
    t = rate * n_tokens
    return 2 * math.ceil(t / mu + 2 + 3 * math.sqrt(t * var / mu ** 3))


@dataclass
class DocumentRoom:
    # One span (2 extra tokens) per document: room for one document per this many raw tokens. Rows
    # of shorter documents may overflow and lose spans (collator.stats["overflow_rows"]); lower it for
    # corpora of very short documents.
    tokens_per_document: int = 64

    def validate(self) -> None:
        if self.tokens_per_document < 2:
            raise ValueError(f"tokens_per_document={self.tokens_per_document} must be >= 2 "
                             f"(a document with a span has at least 2 tokens)")

    def document_room(self, n_tokens: int, per_document: int = 2) -> int:
        return per_document * math.ceil(1 + n_tokens / self.tokens_per_document)


def check_fraction(name: str, value: float, low_open: bool = True, high_open: bool = True) -> None:
    """``value`` must be a finite number in (0, 1) (``low_open``/``high_open`` False: the end included)."""
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name}={value} must lie in {interval}")
