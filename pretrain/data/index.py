"""Per-language windows: epoch e of a language is its documents in a seeded order, each framed as
[cls] + tokens + [eos], concatenated and cut into ceil(tokens / raw_len) windows of equal length (to
one token; at most ``raw_len``), visited in a seeded order. Nothing is dropped, and the epoch's
remainder is spread over all its windows instead of ending it with a nearly empty one (a 1-token
window was a whole row of padding at every epoch end of a small language).

Everything is a pure function of (store contents, document subset, raw_len, seed, language, epoch)
and is built with vectorised numpy the first time an epoch is touched (about 1 s per 10 M
documents); nothing depends on the run length, ranks or workers. With a cache directory, the shuffled
orders are saved once (atomic rename, keyed by everything they depend on) and memory-mapped by
every other rank and worker.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pretrain.data.mixture import language_seed
from pretrain.data.store import LanguageStore
from pretrain.tokens import SpecialTokens

INDEX_VERSION = "windows-v2"
FRAME = 2  # cls + eos around every document
EVAL_SALT = 0x6576616C  # held-out documents do not depend on the training seed
EPOCHS_KEPT = 2


def split_documents(n_docs: int, lang: str, eval_documents: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) document ids: eval is a fixed pseudo-random subset, both sorted."""
    if n_docs <= eval_documents:
        raise ValueError(f"language {lang!r} has {n_docs} documents; data.eval_documents={eval_documents} "
                         f"would leave none for training (lower eval_documents or add data)")
    held_out = np.random.default_rng([EVAL_SALT, language_seed(lang)]).permutation(n_docs)[:eval_documents]
    mask = np.zeros(n_docs, dtype=bool)
    mask[held_out] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


class LanguageWindows:
    """One language's documents (a train or held-out subset) as an endless sequence of windows."""

    def __init__(self, store: LanguageStore, doc_ids: np.ndarray, raw_len: int, seed: int,
                 special: SpecialTokens, shuffle: bool, cache_dir: Path | None = None, data_fingerprint: str = ""):
        self.store, self.doc_ids, self.raw_len = store, doc_ids, raw_len
        self.seed, self.special, self.shuffle = seed, special, shuffle
        self.framed = store.doc_lengths[doc_ids] + FRAME  # [n] int64
        self.tokens_per_epoch = int(self.framed.sum())
        self.samples_per_epoch = math.ceil(self.tokens_per_epoch / raw_len)
        self.cache_dir = cache_dir
        self._cache_key = [INDEX_VERSION, data_fingerprint, store.lang, raw_len, seed,
                           hashlib.sha256(np.ascontiguousarray(doc_ids, dtype=np.int64).tobytes()).hexdigest()]
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_epochs": OrderedDict()}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document order [n], framed end offset of each ordered document [n], window order [samples])."""
        if e not in self._epochs:
            n = len(self.doc_ids)
            if self.shuffle:
                order, windows = self._shuffled(e)
            else:
                order, windows = np.arange(n), np.arange(self.samples_per_epoch)
            self._epochs[e] = (order, np.cumsum(self.framed[order]), windows)
            if len(self._epochs) > EPOCHS_KEPT:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def _shuffled(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.doc_ids)
        path = None
        if self.cache_dir is not None:
            key = hashlib.sha256(json.dumps([*self._cache_key, e]).encode()).hexdigest()[:24]
            path = self.cache_dir / f"{self.store.lang}-epoch{e}-{key}.npy"
            if path.is_file():
                both = np.load(path, mmap_mode="r")
                if both.shape == (n + self.samples_per_epoch,):
                    return both[:n], both[n:]
        rng = np.random.default_rng([self.seed, language_seed(self.store.lang), e])
        order, windows = rng.permutation(n), rng.permutation(self.samples_per_epoch)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique across hosts sharing the dir
            with open(tmp, "wb") as out:
                np.save(out, np.concatenate([order, windows]))
            tmp.replace(path)
        return order, windows

    def window(self, k: int) -> list[np.ndarray]:
        """The k-th window of this language's infinite epoch sequence, one array per document piece."""
        e, position = divmod(k, self.samples_per_epoch)
        order, ends, windows = self.epoch(e)
        start, stop = self.bounds(int(windows[position]))
        pieces = []
        d = int(np.searchsorted(ends, start, side="right"))  # first document ending after start
        while d < len(order) and (doc_start := int(ends[d] - self.framed[order[d]])) < stop:
            pieces.append(self._framed(int(order[d]), max(start, doc_start) - doc_start,
                                       min(stop, int(ends[d])) - doc_start))
            d += 1
        return pieces

    def bounds(self, w: int) -> tuple[int, int]:
        """[start, stop) of window w in the epoch's framed token stream."""
        n, total = self.samples_per_epoch, self.tokens_per_epoch
        return w * total // n, (w + 1) * total // n

    def _framed(self, ordinal: int, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of document ``ordinal`` framed as [cls] + tokens + [eos]."""
        tokens = self.store.document(int(self.doc_ids[ordinal]))
        n = len(tokens)
        parts = [np.array([self.special.cls])] if lo == 0 else []
        parts.append(tokens[max(lo - 1, 0):min(hi - 1, n)])
        if hi == n + FRAME:
            parts.append(np.array([self.special.eos]))
        return np.concatenate(parts, dtype=np.int64)  # the one copy out of the memmap
