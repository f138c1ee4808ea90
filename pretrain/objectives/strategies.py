"""Masking strategies: which spans of each document become blanks, and with which mask token.

Each strategy maps a batch of ``Documents`` to spans (absolute, sorted by start) in one vectorised
pass; the layout itself is always ``infill.layout_rows``. ``spans_for`` is the single-document view
used by tests and tools; it rejects documents that cannot hold a span.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.config import ObjectiveConfig
from pretrain.objectives.spans import Documents, length_cdf, token_spans
from pretrain.tokens import SpecialTokens

# Characters that close a sentence (reference §2.3 set, CJK included), and what may trail them.
SENTENCE_END_CHARS = frozenset(".?!;:。？！；…．｡")
_CLOSERS = "\"'”’)]}」』）》〉 \t\r\u3000"


def sentence_end_ids(token_texts: Sequence[str]) -> np.ndarray:
    """Ids (indices into ``token_texts``, the decoded text of each id) of tokens that end a sentence:
    the text, without trailing spaces and closing quotes/brackets, ends in sentence punctuation, or
    it contains a line break. Whole-token tests avoid GLM's "any token containing '.'" rule."""
    ids = [i for i, text in enumerate(token_texts)
           if "\n" in text or (text.rstrip(_CLOSERS)[-1:] in SENTENCE_END_CHARS and text.rstrip(_CLOSERS))]
    return np.array(ids, dtype=np.int64)


class Strategy:
    name = ""
    mask_role = ""
    # Roles this strategy needs beyond tokens.CORE_ROLES, role -> token string (found or added by name).
    special_tokens: dict[str, str] = {}

    def __init__(self, cfg: ObjectiveConfig, special: SpecialTokens):
        self.cfg, self.special = cfg, special

    @property
    def mask_id(self) -> int:
        """The Part-A token that replaces this strategy's spans (a ``SpecialTokens`` role)."""
        return getattr(self.special, self.mask_role)

    def spans(self, docs: Documents) -> tuple[np.ndarray, np.ndarray, int]:
        """(start, end) of all spans of ``docs`` sorted by start, and the count of fallbacks."""
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
        start, end, _ = self.spans(docs)
        return list(zip(start.tolist(), end.tolist()))


class TokenStrategy(Strategy):
    """[MASK] spans with Poisson lengths covering ``mask_ratio`` of the tokens (the GLM objective)."""
    name = "token"
    mask_role = "mask"

    def __init__(self, cfg: ObjectiveConfig, special: SpecialTokens):
        super().__init__(cfg, special)
        self.cdf = length_cdf(cfg.poisson_lambda, cfg.max_span_length)

    def spans(self, docs):
        return token_spans(docs, self.cfg.mask_ratio, self.cdf)


class SentenceStrategy(Strategy):
    """[sMASK] whole sentences, chosen in random order until ``sentence_ratio`` of each document."""
    name = "sentence"
    mask_role = "smask"

    def __init__(self, cfg: ObjectiveConfig, special: SpecialTokens, end_ids: np.ndarray | None):
        super().__init__(cfg, special)
        if end_ids is None:
            raise ValueError("the sentence strategy needs the sentence-end token ids: pass "
                             "sentence_end_ids=pretrain.objectives.sentence_end_ids(<decoded token texts>)")
        self.end_ids = np.unique(np.asarray(end_ids, dtype=np.int64))

    def spans(self, docs):
        # A sentence runs from its region start or the token after a sentence end up to and
        # including the next sentence end, or to the region end (a trailing fragment counts).
        # Regions never touch: each document's last token lies between them.
        edge = np.zeros(len(docs.tokens) + 1, dtype=np.int64)
        np.add.at(edge, docs.lo, 1)  # add.at: an empty region's lo may equal the next one's
        np.add.at(edge, np.maximum(docs.hi, docs.lo), -1)
        inside = np.cumsum(edge[:-1]) > 0
        ends_here = inside & np.isin(docs.tokens, self.end_ids)
        open_before = np.r_[False, (inside & ~ends_here)[:-1]]
        starts = np.flatnonzero(inside & ~open_before)
        ends = np.flatnonzero(inside & (ends_here | ~np.r_[inside[1:], False])) + 1
        sent_doc = np.searchsorted(docs.start, starts, side="right") - 1
        sent_len = ends - starts
        first = np.searchsorted(sent_doc, np.arange(len(docs.start)))
        index = np.arange(len(starts)) - first[sent_doc]
        shuffled = np.argsort(sent_doc + rng.uniform(docs.key[sent_doc], rng.STREAM_SENTENCE, index))
        taken = np.cumsum(sent_len[shuffled])
        before = taken - sent_len[shuffled] - (taken - sent_len[shuffled])[first[sent_doc[shuffled]]]
        chosen = np.sort(shuffled[before < self.cfg.sentence_ratio * docs.length[sent_doc[shuffled]]])
        return starts[chosen], ends[chosen], 0


class DocumentStrategy(Strategy):
    """[gMASK] one span of [min_ratio, 1] of each document's text after cls: a suffix (probability
    suffix_prob) that runs to the document's end, eos included (docs/contracts.md §2: Part B = sop +
    text[d:], targets text[d:] + eop), or a long infill placed uniformly with text after it."""
    name = "document"
    mask_role = "gmask"

    def spans(self, docs):
        ok = docs.maskable >= 1
        lo, end = docs.lo[ok], docs.end[ok]
        n = end - lo                                                                  # [D] text after cls
        u = rng.uniform(docs.key[ok][:, None], rng.STREAM_DOCUMENT, np.arange(3))     # [D, 3]
        g_min = np.maximum(1, np.ceil(self.cfg.document_min_ratio * n - 1e-9).astype(np.int64))
        g = g_min + (u[:, 0] * (n - g_min + 1)).astype(np.int64)
        # An infill leaves at least the last token after it; a span of the whole text is a suffix.
        suffix = (u[:, 1] < self.cfg.document_suffix_prob) | (g == n)
        start = np.where(suffix, end - g, lo + (u[:, 2] * np.maximum(n - g, 1)).astype(np.int64))
        return start, start + g, 0


class CausalStrategy(Strategy):
    """Plain left-to-right LM as GLM layout: one [gMASK] span over the whole text after cls, so Part
    A is [cls] [gMASK] and Part B predicts the document up to its eos (docs/contracts.md §2 with d = 0)."""
    name = "causal"
    mask_role = "gmask"

    def spans(self, docs):
        ok = docs.maskable >= 1
        return docs.lo[ok], docs.end[ok], 0


def build_strategies(cfg: ObjectiveConfig, special: SpecialTokens,
                     sentence_end_ids: np.ndarray | None = None) -> dict[str, Strategy]:
    """One strategy object per name in the config's mixture, in ``STRATEGY_NAMES`` order."""
    make = {"token": lambda: TokenStrategy(cfg, special),
            "sentence": lambda: SentenceStrategy(cfg, special, sentence_end_ids),
            "document": lambda: DocumentStrategy(cfg, special),
            "causal": lambda: CausalStrategy(cfg, special)}
    return {name: make[name]() for name in cfg.weights()}


def declared_special_tokens(*cfgs: ObjectiveConfig) -> dict[str, str]:
    """The special-token roles (beyond the core ones) that the strategies of ``cfgs`` need."""
    classes = {"token": TokenStrategy, "sentence": SentenceStrategy, "document": DocumentStrategy,
               "causal": CausalStrategy}
    return {role: text for cfg in cfgs for name in cfg.weights() for role, text in classes[name].special_tokens.items()}


def expected_spans(cfg: ObjectiveConfig, name: str, n_tokens: int) -> float:
    """A generous bound on the spans one row of ``n_tokens`` raw tokens gets (for raw_length)."""
    if name in ("token", "sentence"):
        # Renewal count for target t: mean about t/mu + 1, sd sqrt(t var / mu^3); 3 sd + 1 spare;
        # sentences are assumed no shorter than token spans on average.
        cdf = length_cdf(cfg.poisson_lambda, cfg.max_span_length)
        pmf = np.diff(np.r_[0.0, cdf])
        k = np.arange(1, len(pmf) + 1)
        mu, var = float(pmf @ k), float(pmf @ k ** 2) - float(pmf @ k) ** 2
        t = (cfg.mask_ratio if name == "token" else cfg.sentence_ratio) * n_tokens
        return t / mu + 2 + 3 * math.sqrt(t * var / mu ** 3)
    return 1 + n_tokens / cfg.tokens_per_document  # one span per document
