"""``GLMCollator``: TextSamples -> the batch dict of docs/architecture.md, vectorised over the batch.

Per call (``plan``): choose each row's strategy (per global batch or per sample), draw every
document's spans with its row's strategy (an instruction document, one with a prompt length, gets one
[gMASK] span over its response whatever the strategy; [gMASK] blocks prolong the text's positions
only under objective.gmask_positions=continue), drop the last spans of a row that would not fit,
draw the Part-B orders; then (``lay_out``) lay everything out with ``infill.layout_rows``. All
randomness is keyed by (seed, sample id) (``rng``), so a row is the same whatever batch, rank, worker
or resume it is built in.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.boundaries import TokenTables
from pretrain.objectives.config import ObjectiveConfig, prolongs_gmask_blocks
from pretrain.objectives.infill import Spans, layout_rows
from pretrain.objectives.packing import TextSample, order_part_b, overflow_keep, raw_length, segments
from pretrain.objectives.spans import Documents
from pretrain.objectives.strategies import STRATEGIES, Context
from pretrain.objectives.strategies.base import gmask_spans
from pretrain.tokens import SpecialTokens

INSTRUCTION = "instruction"  # the strategy name of instruction documents' segments


@dataclass
class Plan:
    """A batch before layout: its documents and their spans, Part-B order drawn."""
    docs: Documents
    spans: Spans                # sorted by start; rank, closes, eop_loss set
    span_doc: np.ndarray        # [K] document of each span
    seg_lengths: np.ndarray     # [G]
    seg_rows: np.ndarray        # [G]
    sample_ids: np.ndarray      # [B]
    row_strategy: np.ndarray    # [B] index into strategy_names
    doc_strategy: np.ndarray    # [D] the row's, or the index of "instruction"
    dropped: np.ndarray         # [B] spans dropped so that the row fits seq_len


class GLMCollator:
    def __init__(self, cfg: ObjectiveConfig, special: SpecialTokens, seq_len: int, seed: int,
                 global_batch_size: int, sentence_end_ids: np.ndarray | None = None,
                 vocab_size: int | None = None, token_tables: TokenTables | None = None):
        cfg.validate()
        self.prolong = prolongs_gmask_blocks(cfg.gmask_positions)
        special.validate(vocab_size)
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
        self.cfg, self.special, self.seq_len, self.seed = cfg, special, seq_len, seed
        self.global_batch_size, self.token_tables = global_batch_size, token_tables
        self.raw_length = raw_length(cfg, seq_len)
        context = Context(special, sentence_end_ids, vocab_size)
        weights = cfg.weights()
        self.strategies = [STRATEGIES[name](cfg.section(name), context) for name in weights]
        self.strategy_names = (*weights, INSTRUCTION)
        self._cum_weights = np.cumsum(list(weights.values()))
        # rows, documents; too_short: documents without a maskable token; context_only: documents
        # with nothing to predict (Part A only); span_fallbacks: documents whose drawn spans did not
        # fit and were reduced; overflow_rows / overflow_spans: rows that lost spans to fit seq_len,
        # and those spans; padding / positions: padding tokens and all row positions;
        # instruction_documents. Counted per process (each DataLoader worker holds its own copy).
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
        return self.lay_out(self.plan(samples))

    def plan(self, samples: Sequence[TextSample]) -> Plan:
        self._check(samples)
        n_rows = len(samples)
        sample_ids = np.fromiter((s.sample_id for s in samples), dtype=np.int64, count=n_rows)
        docs = Documents.from_rows([s.documents for s in samples], rng.keys(self.seed, sample_ids),
                                   self.special.cls, self.token_tables, self.cfg.boundaries)
        row_strategy = self.row_strategies(sample_ids)
        doc_strategy = row_strategy[docs.row]
        prompt = self._prompt_lengths(samples)
        if prompt is not None:
            doc_strategy[prompt > 0] = len(self.strategies)
        spans = self._draw_spans(docs, doc_strategy, prompt)
        if not self.prolong:
            spans.prolong = None  # every [gMASK] block at its mask's position, as GLM

        span_doc = docs.doc_of(spans.start)
        # Contract 2: a span that runs to the end of a piece cut from a longer document (no eos) must
        # not learn to end there.
        if (docs.tokens[docs.end - 1] != self.special.eos).any():
            at_cut = (spans.end == docs.end[span_doc]) & (docs.tokens[spans.end - 1] != self.special.eos)
            if at_cut.any():
                spans.eop_loss = ~at_cut
        row_text = np.bincount(docs.row, weights=docs.length, minlength=n_rows).astype(np.int64)
        span_growth = spans.growth()
        keep = overflow_keep(docs.row[span_doc], span_growth, row_text, self.seq_len)
        dropped = np.zeros(n_rows, dtype=np.int64)
        if not keep.all():  # rare: skip the filtering otherwise
            dropped = np.bincount(docs.row[span_doc[~keep]], minlength=n_rows)
            spans, span_doc, span_growth = spans.take(keep), span_doc[keep], span_growth[keep]
        used = int(row_text.sum()) + int(span_growth.sum())

        seg_lengths, seg_rows = segments(docs.length, docs.row, n_rows, self.cfg.layout)
        span_seg = seg_lengths.cumsum().searchsorted(spans.start, side="right")
        # Part-B order per segment, keyed by its document (packed) or its row (legacy).
        seg_key = docs.key if self.cfg.layout == "packed" else docs.row_key
        order_part_b(spans, span_seg, seg_key[span_doc], self.cfg.shuffle_order)

        training_doc = span_doc if spans.inline is None else span_doc[~spans.inline | (spans.end > spans.start)]
        self.stats["rows"] += n_rows
        self.stats["documents"] += len(docs.start)
        self.stats["too_short"] += len(docs.start) - int(np.count_nonzero(docs.maskable))
        self.stats["context_only"] += len(docs.start) - int(np.count_nonzero(
            np.bincount(training_doc, minlength=len(docs.start))))
        self.stats["overflow_rows"] += int(np.count_nonzero(dropped))
        self.stats["overflow_spans"] += int(dropped.sum())
        self.stats["instruction_documents"] += 0 if prompt is None else int(np.count_nonzero(prompt))
        self.stats["padding"] += n_rows * self.seq_len - used
        self.stats["positions"] += n_rows * self.seq_len
        return Plan(docs, spans, span_doc, seg_lengths, seg_rows, sample_ids, row_strategy, doc_strategy, dropped)

    def lay_out(self, plan: Plan) -> dict[str, np.ndarray]:
        n_rows = len(plan.sample_ids)
        batch = layout_rows(plan.docs.tokens, plan.seg_lengths, plan.seg_rows, n_rows, self.seq_len, plan.spans,
                            self.special.pad, self.special.sop, self.special.eop, self.cfg.block_positions)
        segment_ids = batch["segment_ids"]
        instruction = len(self.strategies)
        if (plan.doc_strategy != instruction).all():
            batch["strategy_ids"] = np.where(segment_ids >= 0, plan.row_strategy[:, None], -1)
        else:  # per segment: an instruction document's segment (legacy: its whole row) is "instruction"
            is_instruction = plan.doc_strategy == instruction
            if self.cfg.layout == "packed":
                seg_strategy = plan.doc_strategy
            else:
                seg_strategy = np.where(np.bincount(plan.docs.row[is_instruction], minlength=n_rows) > 0,
                                        instruction, plan.row_strategy)
            row_first_seg = plan.seg_rows.searchsorted(np.arange(n_rows))
            index = row_first_seg[:, None] + np.maximum(segment_ids, 0)
            batch["strategy_ids"] = np.where(segment_ids >= 0, seg_strategy[index], -1)
        batch["sample_ids"] = plan.sample_ids
        return batch

    def _draw_spans(self, docs: Documents, doc_strategy: np.ndarray, prompt: np.ndarray | None) -> Spans:
        """Every span of the batch, sorted by start (an empty span before a span at its start)."""
        if prompt is None and (doc_strategy == doc_strategy[0]).all():  # one strategy: no split, no merge
            spans, fallbacks = self.strategies[doc_strategy[0]].spans(docs)
            self.stats["span_fallbacks"] += fallbacks
            return spans
        parts = []
        for index, strategy in enumerate(self.strategies):
            chosen = doc_strategy == index
            if chosen.any():
                spans, fallbacks = strategy.spans(docs.select(chosen))
                self.stats["span_fallbacks"] += fallbacks
                parts.append(spans)
        if prompt is not None:
            # The response of an instruction document: one [gMASK] span, as a document suffix (contract 2).
            has = prompt > 0
            start = docs.start[has] + prompt[has]
            parts.append(gmask_spans(start, docs.end[has], self.special.gmask))
        return Spans.merge(parts, self.special.sop)

    def _prompt_lengths(self, samples: Sequence[TextSample]) -> np.ndarray | None:
        """[D] prompt length of every document (0: plain text), or None when there is no instruction."""
        if all(s.prompt_lengths is None for s in samples):
            return None
        lengths = np.concatenate([np.zeros(len(s.documents), dtype=np.int64) if s.prompt_lengths is None
                                  else np.asarray(s.prompt_lengths, dtype=np.int64) for s in samples])
        return lengths if lengths.any() else None

    def _check(self, samples: Sequence[TextSample]) -> None:
        if len(samples) == 0:
            raise ValueError("the collator got an empty list of samples")
        for sample in samples:
            if not sample.documents:
                raise ValueError(f"sample {sample.sample_id} has no documents; every row needs text")
            total = 0
            for index, doc in enumerate(sample.documents):
                if not isinstance(doc, np.ndarray) or doc.ndim != 1 or len(doc) == 0 or doc.dtype.kind not in "iu":
                    raise ValueError(f"sample {sample.sample_id} document {index} must be a non-empty 1-D "
                                     f"integer numpy array, got {type(doc).__name__} {getattr(doc, 'shape', '')}")
                total += len(doc)
            if total > self.seq_len:
                raise ValueError(f"sample {sample.sample_id} holds {total} tokens, more than seq_len="
                                 f"{self.seq_len}; cut windows to raw_length={self.raw_length}")
            if sample.prompt_lengths is not None:
                self._check_prompts(sample)

    @staticmethod
    def _check_prompts(sample: TextSample) -> None:
        prompts = list(sample.prompt_lengths)
        if len(prompts) != len(sample.documents):
            raise ValueError(f"sample {sample.sample_id} has {len(prompts)} prompt_lengths for "
                             f"{len(sample.documents)} documents; give one per document (0 for plain text)")
        for index, (k, doc) in enumerate(zip(prompts, sample.documents)):
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(doc):
                raise ValueError(f"sample {sample.sample_id} document {index}: prompt length {k!r} must be an "
                                 f"int in [0, {len(doc)}) (the response, tokens [k, {len(doc)}), is not empty)")
