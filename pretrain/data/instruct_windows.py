"""Instruction entries as windows of whole records: a (prompt, response) record is never cut.

Records are packed greedily into windows, in one seeded order fixed for the run: a record costs its
framed length ([cls] + prompt + response + [eos]) plus the 2 tokens its [gMASK] span adds in the
collator ([gMASK] after the prompt, sop before the response), and a window's records cost at most
``raw_len``, so the row always fits ``seq_len`` with nothing dropped. Every epoch visits the same
windows in a new seeded order; in the packed layout records are isolated from each other, so which
records share a window changes nothing any of them sees. A record costing more than ``raw_len`` is
skipped and counted (``too_long``, logged); an entry with no record that fits is refused.

A piece's prompt length counts its cls: tokens [0, 1 + prompt) are the prompt (Part A) and the rest,
response and eos, the response (``TextSample.prompt_lengths``).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pretrain.data.index import FRAME, LanguageWindows
from pretrain.data.mixture import language_seed
from pretrain.data.store import LanguageStore
from pretrain.tokens import SpecialTokens

INSTRUCTION_INDEX_VERSION = "records-v1"
SPAN_TOKENS = 2  # [gMASK] closing Part A, sop opening the response block
PACK_SALT = 0x7061636B  # the packing order is not any epoch's window order
EPOCHS_KEPT = 2
log = logging.getLogger(__name__)


def pack(cost: np.ndarray, budget: int) -> np.ndarray:
    """Greedy consecutive packing: window w holds items [starts[w], starts[w + 1]); every cost <= budget."""
    ends = np.cumsum(cost)
    starts, i = [0], 0
    while i < len(cost):
        i = int(np.searchsorted(ends, (ends[i - 1] if i else 0) + budget, side="right"))
        starts.append(i)
    return np.array(starts, dtype=np.int64)


class InstructionWindows:
    """One instruction entry's records (a train or held-out subset) as an endless sequence of windows."""

    def __init__(self, store: LanguageStore, doc_ids: np.ndarray, raw_len: int, seed: int,
                 special: SpecialTokens, shuffle: bool):
        cost = store.doc_lengths[doc_ids] + FRAME + SPAN_TOKENS
        fits = cost <= raw_len
        self.too_long = int(np.count_nonzero(~fits))
        if not fits.any():
            raise ValueError(f"instruction entry {store.lang!r}: all {len(doc_ids)} records are longer than a "
                             f"window of raw_len={raw_len} tokens (the shortest needs {int(cost.min())}); "
                             f"raise train.seq_len")
        if self.too_long:
            log.warning("instruction entry %r: %d of %d records are longer than a window of %d tokens and are "
                        "skipped", store.lang, self.too_long, len(doc_ids), raw_len)
        records = doc_ids[fits]
        if shuffle:
            rng = np.random.default_rng([seed, language_seed(store.lang), PACK_SALT])
            records = records[rng.permutation(len(records))]
        self.store, self.records, self.seed, self.special, self.shuffle = store, records, seed, special, shuffle
        self.starts = pack(store.doc_lengths[records] + FRAME + SPAN_TOKENS, raw_len)
        self.samples_per_epoch = len(self.starts) - 1
        self.tokens_per_epoch = int((store.doc_lengths[records] + FRAME).sum())
        self._orders: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_orders": OrderedDict()}

    def _records(self, k: int) -> np.ndarray:
        e, position = divmod(k, self.samples_per_epoch)
        if e not in self._orders:
            rng = np.random.default_rng([self.seed, language_seed(self.store.lang), e])
            count = self.samples_per_epoch
            self._orders[e] = rng.permutation(count) if self.shuffle else np.arange(count)
            if len(self._orders) > EPOCHS_KEPT:
                self._orders.popitem(last=False)
        w = int(self._orders[e][position])
        return self.records[self.starts[w]:self.starts[w + 1]]

    def window(self, k: int) -> list[np.ndarray]:
        """The k-th window: whole records, each framed as [cls] + prompt + response + [eos]."""
        cls, eos = np.array([self.special.cls]), np.array([self.special.eos])
        return [np.concatenate([cls, self.store.document(int(r)), eos], dtype=np.int64) for r in self._records(k)]

    def prompt_lengths(self, k: int) -> list[int]:
        """Per piece of ``window(k)``: its prompt tokens, cls included."""
        return [1 + int(self.store.prompt_lengths[r]) for r in self._records(k)]


def entry_windows(store: LanguageStore, doc_ids: np.ndarray, raw_len: int, seed: int, special: SpecialTokens,
                  shuffle: bool, cache_dir: Path | None = None, data_fingerprint: str = ""):
    """The windows of one mixture entry: cut text (index.py) or whole instruction records."""
    if store.prompt_lengths is None:
        return LanguageWindows(store, doc_ids, raw_len, seed, special, shuffle, cache_dir, data_fingerprint)
    return InstructionWindows(store, doc_ids, raw_len, seed, special, shuffle)
