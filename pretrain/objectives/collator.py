"""``GLMCollator``: TextSamples -> the batch dict of docs/architecture.md, vectorised over the batch.

Per call: choose each row's strategy (per global batch or per sample), draw every row's spans,
fit Part B into the rows, draw the Part-B orders, lay everything out with ``infill.layout_rows``.
All randomness is keyed by (seed, sample id) (``rng``), so a row is the same whatever batch,
rank, worker or resume it is built in.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.config import ObjectiveConfig
from pretrain.objectives.infill import Spans, layout_rows
from pretrain.objectives.packing import TextSample, overflow_keep, part_b_rank, raw_length, segments
from pretrain.objectives.spans import Documents
from pretrain.objectives.strategies import build_strategies
from pretrain.tokens import SpecialTokens


class GLMCollator:
    def __init__(self, cfg: ObjectiveConfig, special: SpecialTokens, seq_len: int, seed: int,
                 global_batch_size: int, sentence_end_ids: np.ndarray | None = None,
                 vocab_size: int | None = None):
        cfg.validate()
        special.validate(vocab_size)
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
        self.cfg, self.special, self.seq_len, self.seed = cfg, special, seq_len, seed
        self.global_batch_size = global_batch_size
        self.raw_length = raw_length(cfg, seq_len)
        self.strategies = list(build_strategies(cfg, special, sentence_end_ids).values())
        self.strategy_names = tuple(s.name for s in self.strategies)
        self._cum_weights = np.cumsum(list(cfg.weights().values()))
        # rows, documents; too_short: documents without a maskable token; context_only: documents
        # that got no span (Part A only, no loss); span_fallbacks: documents whose drawn spans did
        # not fit and were reduced; overflow_rows: rows that lost spans to fit seq_len. Counted per
        # process (each DataLoader worker holds its own copy of the collator).
        self.stats: Counter = Counter()

    def __call__(self, samples: Sequence[TextSample]) -> dict:
        import torch
        return {name: torch.from_numpy(array) for name, array in self.build(samples).items()}

    def row_strategies(self, sample_ids: np.ndarray) -> np.ndarray:
        """Index into ``strategy_names`` per row: per global batch (same on every rank) or per sample."""
        if len(self.strategies) == 1:
            return np.zeros(len(sample_ids), dtype=np.int64)
        ids = sample_ids // self.global_batch_size if self.cfg.mixture_level == "batch" else sample_ids
        u = rng.uniform(rng.keys(self.seed, ids), rng.STREAM_MIXTURE)
        return np.minimum(self._cum_weights.searchsorted(u, side="right"), len(self.strategies) - 1)

    def build(self, samples: Sequence[TextSample]) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (same keys and dtypes as ``__call__``)."""
        self._check(samples)
        n_rows = len(samples)
        sample_ids = np.fromiter((s.sample_id for s in samples), dtype=np.int64, count=n_rows)
        docs = Documents.from_rows([s.documents for s in samples], rng.keys(self.seed, sample_ids),
                                   self.special.cls)
        row_strategy = self.row_strategies(sample_ids)
        start, end, mask_id = self._draw_spans(docs, row_strategy)

        span_doc = docs.start.searchsorted(start, side="right") - 1
        row_text = np.bincount(docs.row, weights=docs.length, minlength=n_rows).astype(np.int64)
        keep = overflow_keep(docs.row[span_doc], row_text, self.seq_len)
        overflow = not keep.all()  # rare: skip the filtering otherwise
        self.stats["overflow_rows"] += int(np.unique(docs.row[span_doc[~keep]]).size) if overflow else 0
        if overflow:
            start, end, mask_id, span_doc = start[keep], end[keep], mask_id[keep], span_doc[keep]

        seg_lengths, seg_rows = segments(docs.length, docs.row, n_rows, self.cfg.layout)
        span_seg = seg_lengths.cumsum().searchsorted(start, side="right")
        # Part-B order per segment, keyed by its document (packed) or its row (legacy).
        seg_key = docs.key if self.cfg.layout == "packed" else docs.row_key
        rank = part_b_rank(span_seg, seg_key[span_doc], self.cfg.shuffle_order)
        batch = layout_rows(docs.tokens, seg_lengths, seg_rows, n_rows, self.seq_len,
                            Spans(start, end, mask_id, rank), self.special.pad, self.special.sop,
                            self.special.eop, self.cfg.block_positions)
        batch["strategy_ids"] = np.where(batch["segment_ids"] >= 0, row_strategy[:, None], -1)
        batch["sample_ids"] = sample_ids

        masked_docs = np.bincount(span_doc, minlength=len(docs.start))
        self.stats["rows"] += n_rows
        self.stats["documents"] += len(docs.start)
        self.stats["too_short"] += len(docs.start) - int(np.count_nonzero(docs.maskable))
        self.stats["context_only"] += len(docs.start) - int(np.count_nonzero(masked_docs))
        return batch

    def _draw_spans(self, docs: Documents, row_strategy: np.ndarray):
        """(start, end, mask id) of every span of the batch, sorted by start."""
        if (row_strategy == row_strategy[0]).all():  # one strategy for the whole batch: no split, no merge
            return self._strategy_spans(self.strategies[row_strategy[0]], docs)
        doc_strategy = row_strategy[docs.row]
        parts = []
        for index, strategy in enumerate(self.strategies):
            chosen = doc_strategy == index
            if chosen.any():
                parts.append(self._strategy_spans(strategy, docs.select(chosen)))
        start, end, mask_id = (np.concatenate(column) for column in zip(*parts))
        by_start = start.argsort(kind="stable")
        return start[by_start], end[by_start], mask_id[by_start]

    def _strategy_spans(self, strategy, docs: Documents):
        start, end, fallbacks = strategy.spans(docs)
        self.stats["span_fallbacks"] += fallbacks
        return start, end, np.full(len(start), strategy.mask_id)

    def _check(self, samples: Sequence[TextSample]) -> None:
        if len(samples) == 0:
            raise ValueError("the collator got an empty list of samples")
        for sample in samples:
            if not sample.documents:
                raise ValueError(f"sample {sample.sample_id} has no documents; every row needs text")
            if sample.prompt_lengths is not None:
                raise ValueError(f"sample {sample.sample_id} is an instruction sample (prompt_lengths); this "
                                 f"collator does not lay those out yet")
            total = 0
            for index, doc in enumerate(sample.documents):
                if not isinstance(doc, np.ndarray) or doc.ndim != 1 or len(doc) == 0 or doc.dtype.kind not in "iu":
                    raise ValueError(f"sample {sample.sample_id} document {index} must be a non-empty 1-D "
                                     f"integer numpy array, got {type(doc).__name__} {getattr(doc, 'shape', '')}")
                total += len(doc)
            if total > self.seq_len:
                raise ValueError(f"sample {sample.sample_id} holds {total} tokens, more than seq_len="
                                 f"{self.seq_len}; cut windows to raw_length={self.raw_length}")
