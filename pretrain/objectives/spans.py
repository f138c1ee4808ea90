"""The documents of a batch and the span-drawing pieces every strategy is built from.

Everything is vectorised over all documents of a batch. A document may only be masked inside its
maskable region [lo, hi): never its leading cls, never its last token (the eos of a whole document,
or the last token of a cut piece, whose continuation is unknown) — reference §2.2. Document-level
spans ([gMASK] suffixes, causal) are the exception: they run to the document's end (``Documents.end``).
Where ``Documents.boundary`` is set, span boundaries keep characters (or words) whole (``snap``,
``pick_boundaries``, ``region_units``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.boundaries import TokenTables, Unit, clean_boundaries
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
    boundary: np.ndarray | None = None  # [T + 1] bool: a span may begin/end before token p (None: anywhere)

    @classmethod
    def from_rows(cls, rows: list[list[np.ndarray]], row_keys: np.ndarray, cls_id: int,
                  tables: TokenTables | None = None, unit: Unit = "token") -> "Documents":
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
                   rng.subkeys(row_key, index_in_row), row_key, clean_boundaries(tokens, start, tables, unit))

    def select(self, mask: np.ndarray) -> "Documents":
        """The documents where ``mask`` is true (tokens and boundaries stay shared, offsets absolute,
        and so do the boundary tables built from them)."""
        subset = Documents(**{f.name: getattr(self, f.name) if f.name in ("tokens", "boundary")
                              else getattr(self, f.name)[mask] for f in fields(self)})
        subset.__dict__.update({k: v for k, v in self.__dict__.items() if k in ("clean_before", "clean_count")})
        return subset

    @property
    def end(self) -> np.ndarray:
        """End of each document (absolute, exclusive): document-level spans may run up to it."""
        return self.start + self.length

    def doc_of(self, positions: np.ndarray) -> np.ndarray:
        """Index (into these documents) of the document holding each position."""
        return self.start.searchsorted(positions, side="right") - 1

    def inside(self) -> np.ndarray:
        """[T] bool: the token lies in some document's maskable region [lo, hi)."""
        edge = np.zeros(len(self.tokens) + 1, dtype=np.int64)
        np.add.at(edge, self.lo, 1)  # add.at: an empty region's lo may equal the next one's
        np.add.at(edge, np.maximum(self.hi, self.lo), -1)
        return np.cumsum(edge[:-1]) > 0

    @functools.cached_property
    def clean_before(self) -> np.ndarray:
        """[T + 1] the last boundary at or before each position (-1: none)."""
        return np.maximum.accumulate(np.where(self.boundary, np.arange(len(self.boundary)), -1))

    @functools.cached_property
    def clean_count(self) -> np.ndarray:
        """[T + 1] number of boundaries at or before each position."""
        return np.cumsum(self.boundary)

    def next_clean(self, positions: np.ndarray) -> np.ndarray:
        """The first boundary at or after each position (the end, T, is one)."""
        count = self.clean_count
        before = np.where(positions > 0, count[np.maximum(positions - 1, 0)], 0)
        return np.minimum(np.searchsorted(count, before + 1), len(count) - 1)


def index_in_group(group: np.ndarray) -> np.ndarray:
    """k for the k-th element of its group (``group`` non-decreasing: a document, a row)."""
    return np.arange(len(group)) - np.searchsorted(group, group)


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


def token_spans(docs: Documents, ratio: float, cdf: np.ndarray, length_stream: int,
                place_stream: int) -> tuple[np.ndarray, np.ndarray, int]:
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
    lengths = cdf.searchsorted(rng.uniform(draw_key, length_stream, draw_index), side="right") + 1
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
    place_u = rng.uniform(docs.row_key[span_doc], place_stream, draw - draw_first[doc_row[span_doc]])
    place = (place_u * (slack[span_doc] + 1)).astype(np.int64)
    width = int(slack.max(initial=0)) + 1
    place = np.sort(span_doc * width + place) % width          # sorted places inside each document
    start = docs.lo[span_doc] + place + before
    return start, start + span_len, n_fallback


def snap(docs: Documents, start: np.ndarray, end: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Spans (sorted, non-empty) moved to whole units: each boundary moves to the clean position before
    or after it, after with probability in proportion to its distance from the one before (one draw
    per span for both ends, so the ends move together), so spans keep their length and the masked
    ratio in expectation. A start never moves before the first whole unit of its document's maskable
    region (a piece may be cut inside a character), an end never past the region; an end at the
    document's end stays. Spans left empty are dropped; spans that then overlap merge, and so do spans
    that then touch but had a gap (spans that had one keep one). A no-op without boundaries."""
    if docs.boundary is None or len(start) == 0:
        return start, end
    doc = docs.doc_of(start)
    row = docs.row[doc]
    u = rng.uniform(docs.row_key[doc], stream, index_in_group(row))

    def rounded(p):
        below, above = docs.clean_before[p], docs.next_clean(p)
        return np.where(u * (above - below) < p - below, above, below)

    new_start = np.maximum(rounded(start), docs.next_clean(docs.lo[doc]))
    new_end = np.where(end == docs.end[doc], end, rounded(end))
    new_end = np.where(new_end > np.maximum(end, docs.hi[doc]), docs.clean_before[end], new_end)
    keep = new_end > new_start
    start, end, new_start, new_end, doc = start[keep], end[keep], new_start[keep], new_end[keep], doc[keep]
    gap_before = np.r_[True, start[1:] > end[:-1]]
    # Merge spans of one document that now overlap, or touch where they did not (ends are
    # non-decreasing per document).
    reach = np.maximum.accumulate(new_end)
    opens = np.ones(len(new_start), dtype=bool)
    opens[1:] = ((new_start[1:] > reach[:-1]) | (new_start[1:] == reach[:-1]) & ~gap_before[1:]) \
        | (doc[1:] != doc[:-1])
    first = np.flatnonzero(opens)
    return new_start[first], np.maximum.reduceat(new_end, first) if len(first) else new_end[first]


def region_units(docs: Documents, cut_before: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of the units that tile every maskable region: a unit ends at the region's end or
    where the next position has ``cut_before`` set ([T] bool; None: every position, units of one token)."""
    inside = docs.inside()
    opens = inside.copy()
    if cut_before is not None:
        opens[1:] &= cut_before[1:] | ~inside[:-1]
    starts = np.flatnonzero(opens)
    closes = np.zeros(len(inside), dtype=bool)
    closes[:-1] = opens[1:] | ~inside[1:]
    closes[-1] = True
    ends = np.flatnonzero(inside & closes) + 1
    return starts, ends


def take_units(docs: Documents, unit_doc: np.ndarray, unit_len: np.ndarray, candidate: np.ndarray,
               ratio: float, order_stream: int, round_stream: int) -> np.ndarray:
    """Which units to mask: per row, the candidate units in random order while they fit ``ratio`` of
    the row's tokens; the unit that crosses the target is taken with probability (target - before) /
    length, so the expected masked count is exactly ``ratio`` of the row (GLM's "at least the target"
    rule overshoots by most of a unit, which on short sentences or documents is most of the ratio).
    ``unit_doc`` is non-decreasing. Returns a bool mask over the units."""
    row = docs.row[unit_doc]
    targets = ratio * np.bincount(docs.row, weights=docs.length, minlength=int(docs.row.max(initial=-1)) + 1)
    index_in_row = index_in_group(row)
    u = rng.uniform(docs.row_key[unit_doc], order_stream, index_in_row)
    order = np.flatnonzero(candidate)[np.argsort(row[candidate] + u[candidate], kind="stable")]
    length = unit_len[order]
    taken = length.cumsum()
    row_sorted = row[order]
    first = np.searchsorted(row_sorted, row_sorted)
    before = taken - length - (taken - length)[first]
    room = targets[row_sorted] - before
    crossing = rng.uniform(docs.row_key[unit_doc[order]], round_stream, index_in_row[order])
    chosen = np.zeros(len(row), dtype=bool)
    chosen[order] = (length <= room) | (room > 0) & (crossing * length < room)
    return chosen


def pick_boundaries(docs: Documents, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per document, a position drawn uniformly from the clean positions in [lo, hi] (every position
    without boundaries: split points at character level, as FIM draws them); lo when there is none."""
    if docs.boundary is None:
        return lo + (u * (hi - lo + 1)).astype(np.int64)
    count = docs.clean_count
    before = np.where(lo > 0, count[np.maximum(lo - 1, 0)], 0)
    n = count[hi] - before
    k = (u * n).astype(np.int64)
    return np.where(n > 0, np.searchsorted(count, before + k + 1), lo)


def compositions(total: np.ndarray, parts: np.ndarray, keys: np.ndarray, stream: int) -> np.ndarray:
    """Uniformly random compositions: per document d, ``parts[d]`` positive lengths summing to
    ``total[d]`` (T5's ``_random_segmentation``), flat in document order. Needs parts <= total."""
    slots = np.maximum(total - 1, 0) * (parts > 0)             # candidate cut points 1..total-1
    slot_doc = np.arange(len(total)).repeat(slots)
    slot = np.arange(len(slot_doc)) - offsets(slots)[:-1][slot_doc] + 1
    u = rng.uniform(keys[slot_doc], stream, slot)
    order = np.argsort(slot_doc + u, kind="stable")
    rank = index_in_group(slot_doc[order])
    cut = np.sort(order[rank < parts[slot_doc[order]] - 1])    # the parts-1 cuts of each document, in order
    ends = np.empty(int(parts.sum()), dtype=np.int64)
    last = offsets(parts)[1:][parts > 0] - 1
    is_cut = np.ones(len(ends), dtype=bool)
    is_cut[last] = False
    ends[is_cut], ends[last] = slot[cut], total[parts > 0]
    starts = np.empty_like(ends)
    starts[1:] = ends[:-1]
    starts[offsets(parts)[:-1][parts > 0]] = 0
    return ends - starts
