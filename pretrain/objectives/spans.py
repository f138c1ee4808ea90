"""Span lengths from a truncated Poisson and their non-overlapping placement inside documents.

Everything is vectorised over all documents of a batch. A document may only be masked inside its
maskable region [lo, hi): never its leading cls, never its last token (the eos of a whole document,
or the last token of a cut piece, whose continuation is unknown) — reference §2.2. Document-level
spans ([gMASK] suffixes, causal) are the exception: they run to the document's end (``Documents.end``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import offsets


@dataclass
class Documents:
    """The documents of a batch, flat: ``tokens[start[d]:start[d] + length[d]]`` is document d."""
    tokens: np.ndarray    # [T] int64, rows after rows, documents in row order
    start: np.ndarray     # [D] absolute offset of each document
    length: np.ndarray    # [D]
    lo: np.ndarray        # [D] first maskable offset (absolute)
    hi: np.ndarray        # [D] end of the maskable region (absolute, exclusive); hi - lo may be <= 0
    maskable: np.ndarray  # [D] max(hi - lo, 0): tokens a span may cover
    row: np.ndarray       # [D] row of the document in the batch (non-decreasing)
    key: np.ndarray       # [D] uint64 random key of the document
    row_key: np.ndarray   # [D] uint64 random key of the document's row

    @classmethod
    def from_rows(cls, rows: list[list[np.ndarray]], row_keys: np.ndarray, cls_id: int) -> "Documents":
        flat = [d for docs in rows for d in docs]
        lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))       # [D]
        docs_per_row = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))  # [R]
        row = np.arange(len(rows)).repeat(docs_per_row)                           # [D]
        tokens = np.concatenate(flat).astype(np.int64, copy=False)
        start = lengths.cumsum() - lengths
        index_in_row = np.arange(len(row)) - (docs_per_row.cumsum() - docs_per_row)[row]
        lo = start + (tokens[start] == cls_id)
        hi = start + lengths - 1
        row_key = row_keys[row]
        return cls(tokens, start, lengths, lo, hi, np.maximum(hi - lo, 0), row,
                   rng.subkeys(row_key, index_in_row), row_key)

    def select(self, mask: np.ndarray) -> "Documents":
        """The documents where ``mask`` is true (tokens stay shared, offsets stay absolute)."""
        return Documents(**{f.name: getattr(self, f.name) if f.name == "tokens" else getattr(self, f.name)[mask]
                            for f in fields(self)})

    @property
    def end(self) -> np.ndarray:
        """End of each document (absolute, exclusive): document-level spans may run up to it."""
        return self.start + self.length


def _starts_of_runs(values: np.ndarray) -> np.ndarray:
    """True where ``values`` differs from its predecessor (and at 0)."""
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return first


def length_cdf(poisson_lambda: float, max_length: int) -> np.ndarray:
    """CDF of Poisson(lambda) truncated to 1..max_length: cdf[k-1] = P(L <= k); cdf[-1] == 1."""
    k = np.arange(1, max_length + 1)
    log_pmf = k * math.log(poisson_lambda) - poisson_lambda - np.array([math.lgamma(i + 1) for i in k])
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf / pmf.sum())
    cdf[-1] = 1.0
    return cdf


def token_spans(docs: Documents, ratio: float, cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Poisson spans covering at least ``ratio`` of each row's tokens, placed per document.

    Lengths are drawn from one stream per row until the covered count reaches ``ratio`` of the
    row's tokens (GLM's stopping rule, with ratio * n instead of int(ratio * n)). Document d of the
    row takes the draws that carry the running count past ``ratio * (tokens of documents 0..d)``:
    every document gets its share (GLM gave nearly all spans to a row's longest document) and the
    row as a whole stops as GLM does. Inside a document, spans keep >= 1 unmasked token between
    them and are placed uniformly (reference ``sample_spans``). Spans that do not fit their
    document are dropped from the end of its list (counted as fallbacks).
    Returns (start, end) sorted by start, and the number of documents that needed the fallback.
    """
    n_doc = len(docs.start)
    if n_doc == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, 0
    first_in_row = _starts_of_runs(docs.row)
    row_first_doc = first_in_row.nonzero()[0]
    last_in_row = np.concatenate((row_first_doc[1:] - 1, [n_doc - 1]))
    doc_row = first_in_row.cumsum() - 1                                    # [D] local row index
    cum_len = docs.length.cumsum()
    row_base_len = (cum_len - docs.length)[row_first_doc]
    target = ratio * (cum_len - row_base_len[doc_row])                       # [D] running row target

    # One stream of lengths per row; ceil(row target) draws always suffice since every length >= 1.
    n_draw = np.ceil(target[last_in_row]).astype(np.int64)                   # [R]
    draw_first = offsets(n_draw)[:-1]
    draw_row = np.arange(len(n_draw)).repeat(n_draw)
    draw_index = np.arange(n_draw.sum()) - draw_first[draw_row]
    draw_key = docs.row_key[row_first_doc][draw_row]
    lengths = cdf.searchsorted(rng.uniform(draw_key, rng.STREAM_SPAN_LENGTH, draw_index), side="right") + 1
    covered = lengths.cumsum()
    covered_before_row = covered[draw_first] - lengths[draw_first]
    doc_end = covered.searchsorted(covered_before_row[doc_row] + target, side="left") + 1
    doc_begin = np.where(first_in_row, draw_first[doc_row], np.concatenate(([0], doc_end[:-1])))
    n_spans = doc_end - doc_begin                                            # [D]

    span_doc = np.arange(n_doc).repeat(n_spans)                          # [K]
    span_first = offsets(n_spans)[:-1]
    draw = np.arange(len(span_doc)) - span_first[span_doc] + doc_begin[span_doc]
    span_len = lengths[draw]
    # Keep the longest prefix of each document's list that fits with one-token gaps.
    need = (span_len + 1).cumsum()
    need = need - (need - span_len - 1)[span_first[span_doc]] - 1            # [K] room for spans 0..k
    fits = need <= docs.maskable[span_doc]
    n_fallback = 0
    if not fits.all():
        reduced = span_doc[~fits & (docs.maskable[span_doc] > 0)]
        n_fallback = int(np.count_nonzero(np.bincount(reduced, minlength=n_doc)))
        span_doc, span_len, draw, need = span_doc[fits], span_len[fits], draw[fits], need[fits]

    # The kept spans are a prefix of each document's list, so ``need`` still holds their room.
    before = need - span_len                                                 # [K] sum of (len+1) before
    slack = docs.maskable - np.bincount(span_doc, weights=span_len + 1, minlength=n_doc).astype(np.int64) + 1
    place_u = rng.uniform(docs.row_key[span_doc], rng.STREAM_SPAN_PLACE, draw - draw_first[doc_row[span_doc]])
    place = (place_u * (slack[span_doc] + 1)).astype(np.int64)
    width = int(slack.max(initial=0)) + 1
    place = np.sort(span_doc * width + place) % width          # sorted places inside each document
    start = docs.lo[span_doc] + place + before
    return start, start + span_len, n_fallback
