"""``build_loader``: global sample ids -> TextSamples -> collated micro-batches of one data-parallel rank.

Train: an infinite (or, with every language capped, finite) mixture stream; its whole state is
``consumed_samples``, counted from micro-batches actually handed to the trainer (never from what
workers prefetched) plus the identity of everything the order depends on, checked on resume.
Valid: the held-out documents of every language in a fixed order, the same batches every time;
the last micro-step is filled up by wrapping around, with those rows' loss_mask zeroed, so every
rank runs the same number of steps and nothing is counted twice.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from tokenizers import Tokenizer

from pretrain.data.config import DataConfig
from pretrain.data.corpus import prepare_embedded_corpus
from pretrain.data.index import INDEX_VERSION, split_documents
from pretrain.data.instruct_windows import INSTRUCTION_INDEX_VERSION, InstructionWindows, entry_windows
from pretrain.data.mixture import Mixture, mixture_weights
from pretrain.data.sampler import RankBatchSampler, check_batch_geometry
from pretrain.data.store import TOKENIZER, TokenStore, open_store
from pretrain.data.token_tables import token_tables
from pretrain.data.tokenizer import load_tokenizer, resolve_special_tokens, tokenizer_fingerprint
from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample, TokenTables, raw_length, sentence_end_ids
from pretrain.tokens import SpecialTokens

logger = logging.getLogger(__name__)

STATE_VERSION = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # what a cluster sends to stop a job
MAX_WORKER_RESTARTS = 3  # in a row without a batch in between
SPLITS = ("train", "valid")
RESUME_FIXES = {
    "data_fingerprint": "the training data changed since the checkpoint; resume with the same data, or start a new run",
    "tokenizer_sha256": "the tokenizer changed since the checkpoint (the tokenizer.json of data.path); resume with "
                        "data preprocessed by the checkpoint's tokenizer",
    "index_version": "the sample-index algorithm changed; resume with the code version that wrote the checkpoint",
    "mixture_hash": "the language mixture (alpha, weights, max_epochs, blend_block) changed; restore it",
}


class DataExhaustedError(RuntimeError):
    """Every language reached its max_epochs cap."""
    user_error = True  # one line, exit 2 (pretrain/cli/_errors.py)


class ResumeMismatchError(ValueError):
    """A checkpoint's loader state does not describe this run's data stream."""


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers: a stop signal sent to a process group (torchrun, Slurm) reaches them too; the
    trainer decides when to stop (it saves first) and then shuts its workers down itself. So a worker
    ignores these signals, except from its parent: the DataLoader ends a stuck worker with SIGTERM (and
    so does multiprocessing at exit), which SIG_IGN would turn into a hang. The signals are blocked and
    a thread reads each one with its sender (sigwaitinfo), which a handler cannot see."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # threads started later inherit the mask

    def watch() -> None:
        while True:
            sender = signal.sigwaitinfo(STOP_SIGNALS).si_pid
            if sender == parent or os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="stop-signal-watch", daemon=True).start()


def _worker_died(err: Exception) -> bool:
    """A worker killed by a signal: the DataLoader's own check ("DataLoader worker ... exited"), or a batch
    the dead worker had queued whose shared memory it can no longer hand over (connection reset)."""
    return isinstance(err, (ConnectionError, EOFError)) or "DataLoader worker" in str(err)


class EvalIndex:
    """Valid ids -> (language, window): each language's windows in turn; ids past the end wrap."""

    def __init__(self, samples_per_language: list[int]):
        self.ends = np.cumsum(samples_per_language)
        self.total_samples = int(self.ends[-1])

    def locate(self, sample_id: int) -> tuple[int, int]:
        sample_id %= self.total_samples
        lang = int(np.searchsorted(self.ends, sample_id, side="right"))
        return lang, sample_id - (int(self.ends[lang - 1]) if lang else 0)


class SampleDataset(torch.utils.data.Dataset):
    """Map-style: global sample id -> TextSample. Workers only run this; the sampler decides order."""

    def __init__(self, languages: list[str], windows: list, index: Mixture | EvalIndex):
        self.languages, self.windows, self.index = languages, windows, index  # windows: index.py / instruct_windows.py

    def __getitem__(self, sample_id: int) -> TextSample:
        lang, k = self.index.locate(sample_id)
        windows = self.windows[lang]
        prompts = windows.prompt_lengths(k) if isinstance(windows, InstructionWindows) else None
        return TextSample(sample_id=sample_id, documents=windows.window(k),
                          language=self.languages[lang], prompt_lengths=prompts)


class PretrainLoader:
    """Iterate for this rank's collated micro-batches; ``state_dict``/``load_state_dict`` for exact resume."""

    def __init__(self, dataset: SampleDataset, collator: Callable, *, split: str, stop: int | None,
                 identity: dict, micro_batch_size: int, dp_rank: int, dp_size: int, num_workers: int,
                 source: "DataSource", mixture_weights: dict[str, float]):
        self.dataset, self.collator, self.split, self.stop = dataset, collator, split, stop
        self.identity = identity
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        self.num_workers, self.tokenizer, self.root = num_workers, source.tokenizer, source.root
        self.mixture_weights = mixture_weights
        self.languages = dataset.languages
        self.vocab_size, self.special = source.vocab_size, source.special
        self.consumed_samples = 0

    def _sampler(self) -> RankBatchSampler:
        start = self.consumed_samples if self.split == "train" else 0
        return RankBatchSampler(start, self.stop, self.micro_batch_size, self.dp_rank, self.dp_size)

    def __len__(self) -> int:
        return len(self._sampler())

    def __iter__(self) -> Iterator[dict]:
        restarts = 0
        while True:  # once, unless a worker dies: then again from consumed_samples (exact)
            sampler = self._sampler()
            try:
                for batch in self._batches(sampler):
                    if self.split == "train":
                        self.consumed_samples += sampler.step  # counted when handed over, not when prefetched
                    else:
                        batch["loss_mask"][batch["sample_ids"] >= self.dataset.index.total_samples] = 0
                    restarts = 0
                    yield batch
            except (RuntimeError, ConnectionError, EOFError) as err:
                if self.split != "train" or not _worker_died(err) or restarts == MAX_WORKER_RESTARTS:
                    raise
                restarts += 1
                logger.warning("%s; restarting the data loader at sample %d", err, self.consumed_samples)
                continue
            break
        if self.split == "train":
            raise DataExhaustedError(
                f"training data exhausted after {self.consumed_samples} samples: every language reached "
                f"its data.max_epochs cap; raise the caps or train for fewer steps")

    def _batches(self, sampler: RankBatchSampler) -> Iterator[dict]:
        # Its own generator: a DataLoader iterator draws its base seed from the global torch RNG otherwise,
        # which would shift dropout after a resume (the samples never depend on the seed).
        workers = self.num_workers
        sources = {name: i for i, name in enumerate(self.languages)}
        batches = iter(torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=workers,
            collate_fn=functools.partial(collate_with_sources, self.collator, sources),
            pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None,
            worker_init_fn=_ignore_stop_signals if workers else None, generator=torch.Generator().manual_seed(0)))
        if workers and threading.current_thread() is threading.main_thread():
            # The workers started, and torch installed its SIGCHLD handler, which raises "DataLoader worker
            # killed" wherever the main thread is (mid-step, mid-save). Without it next() sees a dead worker
            # (the DataLoader checks every 5 s) and __iter__ restarts the workers.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return batches

    def describe(self) -> str:
        """One line: which data, tokenizer and language mixture this loader reads."""
        mixture = ", ".join(f"{lang} {weight:.3f}" for lang, weight in sorted(self.mixture_weights.items()))
        return (f"data {self.root} (fingerprint {self.identity['data_fingerprint']}), tokenizer sha256 "
                f"{self.identity['tokenizer_sha256'][:16]} (vocabulary {self.vocab_size}), mixture {mixture}")

    def language_epochs(self) -> dict[str, float]:
        """Passes over each language's training data so far (for logging; tail languages repeat)."""
        used = self.dataset.index.used_before(self.consumed_samples)
        return {lang: used[lang] / w.samples_per_epoch for lang, w in zip(self.languages, self.dataset.windows)}

    def state_dict(self) -> dict:
        informational = {"micro_batch_size": self.micro_batch_size, "dp_size_at_save": self.dp_size,
                         "mixture_weights": self.mixture_weights}
        if self.split == "train":
            informational["language_epochs"] = self.language_epochs()
        return {**self.identity, "consumed_samples": self.consumed_samples, **informational}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state['consumed_samples']``; refuses a state from a different data stream."""
        for key, expected in self.identity.items():
            found = state.get(key)
            if found != expected:
                fix = RESUME_FIXES.get(key, f"set {key} back to {found!r} to resume this run")
                raise ResumeMismatchError(f"cannot resume the data loader: the checkpoint has {key}={found!r}, "
                                          f"this run has {expected!r}; {fix}")
        consumed = state.get("consumed_samples")
        step = self.micro_batch_size * self.dp_size
        if not isinstance(consumed, int) or consumed < 0 or consumed % step:
            raise ResumeMismatchError(f"cannot resume the data loader: consumed_samples={consumed!r} is not a "
                                      f"multiple of micro_batch_size*dp_size={step}")
        if self.stop is not None and consumed > self.stop:
            raise ResumeMismatchError(f"cannot resume: consumed_samples={consumed} is past the end of the "
                                      f"data ({self.stop} samples)")
        self.consumed_samples = consumed


def collate_with_sources(collator: Callable, source_index: Mapping[str, int], samples: list[TextSample]) -> dict:
    """The collator's batch plus ``source_ids`` [B] int64: each row's source, an index into
    ``PretrainLoader.languages`` (the trainer's per-source losses)."""
    batch = collator(samples)
    batch["source_ids"] = torch.tensor([source_index[sample.language] for sample in samples], dtype=torch.int64)
    return batch


@dataclass
class DataSource:
    """A preprocessed directory opened once (shards checked, tokenizer loaded, special tokens found by
    role), for every loader and collator of a run."""
    root: Path
    store: TokenStore
    tokenizer: Tokenizer  # with any special tokens that resolve_special_tokens added
    special: SpecialTokens

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary, added special tokens included (the model section pads it)."""
        return self.tokenizer.get_vocab_size()

    @functools.cached_property
    def sentence_end_ids(self) -> np.ndarray:
        """Ids of the tokens that end a sentence (the sentence strategy's table), decoded once per run."""
        return sentence_end_ids([self.tokenizer.decode([i], skip_special_tokens=False)
                                 for i in range(self.tokenizer.get_vocab_size())])

    @functools.cached_property
    def token_tables(self) -> TokenTables:
        """Where each token id may start or end a span (whole characters, whole words)."""
        return token_tables(self.tokenizer)


def open_data(cfg: DataConfig, declared_special_tokens: Mapping[str, str] = {}) -> DataSource:
    """``data.path``, or the embedded corpus, built on first use. ``declared_special_tokens``: the
    roles the run's strategies need beyond the core ones (``objectives.declared_special_tokens``)."""
    if cfg.path is None and cfg.corpus is None:
        raise ValueError("data.path is not set: give a preprocessed directory (data.path=DIR, made by `python -m "
                         "pretrain preprocess`) or ask for the built-in corpus by name (data.corpus=embedded)")
    root = Path(cfg.path) if cfg.path else prepare_embedded_corpus(cfg.cache_dir, cfg.embedded_vocab_size)
    store = open_store(root, verify_checksums=cfg.verify_checksums, record_dir=Path(cfg.cache_dir) / "verified")
    if cfg.tokenizer is None:
        tokenizer = load_tokenizer(root / TOKENIZER)
    else:  # the run's own copy: it must give the ids the shards hold (the manifest records theirs)
        theirs = store.manifest["tokenizer_fingerprint"]
        tokenizer = load_tokenizer(cfg.tokenizer)
        ours = tokenizer_fingerprint(tokenizer)
        if ours != theirs:
            raise ValueError(f"data.tokenizer={cfg.tokenizer} (fingerprint {ours}) is not the tokenizer {root} was "
                             f"preprocessed with ({root / TOKENIZER}, fingerprint {theirs}); preprocess the data "
                             f"with --tokenizer {cfg.tokenizer}, or drop data.tokenizer to use the data's own")
    try:
        special = resolve_special_tokens(tokenizer, declared_special_tokens, cfg.special_tokens)
    except ValueError as err:
        raise ValueError(f"{cfg.tokenizer or root / TOKENIZER}: {err}") from None
    return DataSource(root, store, tokenizer, special)


def glm_collator(source: DataSource, objective: ObjectiveConfig, *, seq_len: int, seed: int,
                 global_batch_size: int) -> GLMCollator:
    """The GLM collator for this data's tokenizer (special ids, vocabulary size, sentence ends, span
    boundary tables)."""
    return GLMCollator(objective, source.special, seq_len, seed, global_batch_size,
                       sentence_end_ids=source.sentence_end_ids, vocab_size=source.vocab_size,
                       token_tables=None if objective.boundaries == "token" else source.token_tables)


def samples_and_collator(cfg: DataConfig, source: DataSource, objective: ObjectiveConfig, *, seq_len: int,
                          seed: int, global_batch_size: int, split: str = "train") -> tuple["PretrainLoader", GLMCollator]:
    """What a run of ``objective`` would see, for looking at it (inspect, ablation statistics): a loader
    of raw samples (one rank, micro-batch = global batch) and the collator the run would build."""
    loader = build_loader(cfg, lambda samples: samples, seq_len=seq_len, raw_len=raw_length(objective, seq_len),
                          global_batch_size=global_batch_size, micro_batch_size=global_batch_size, dp_rank=0,
                          dp_size=1, seed=seed, split=split, source=source)
    return loader, glm_collator(source, objective, seq_len=seq_len, seed=seed, global_batch_size=global_batch_size)


def build_loader(cfg: DataConfig, collator: Callable, *, seq_len: int, raw_len: int, global_batch_size: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int, seed: int, split: str = "train",
                 source: DataSource | None = None) -> PretrainLoader:
    """``source``: the data opened by ``open_data(cfg)`` (opened here when not given)."""
    check_batch_geometry(global_batch_size, micro_batch_size, dp_rank, dp_size)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    if not 2 <= raw_len <= seq_len:
        raise ValueError(f"raw_len={raw_len} must be in [2, seq_len={seq_len}]")
    if split == "valid" and cfg.eval_documents == 0:
        raise ValueError("split='valid' needs held-out documents: set data.eval_documents > 0")
    source = source or open_data(cfg)
    store = source.store
    languages = sorted(store.languages)
    splits = {lang: split_documents(store.languages[lang].n_docs, lang, cfg.eval_documents) for lang in languages}
    train = [entry_windows(store.languages[lang], splits[lang][0], raw_len, seed, source.special,
                           shuffle=True, cache_dir=Path(cfg.cache_dir) / "index", data_fingerprint=store.fingerprint)
             for lang in languages]
    weights = mixture_weights({lang: w.tokens_per_epoch for lang, w in zip(languages, train)},
                              cfg.alpha, cfg.weights)
    mixture = Mixture(weights, {lang: w.samples_per_epoch for lang, w in zip(languages, train)},
                      cfg.max_epochs, cfg.blend_block)
    if mixture.total_samples is not None and mixture.total_samples < global_batch_size:
        raise ValueError(f"data.max_epochs caps leave {mixture.total_samples} samples, less than one global "
                         f"batch ({global_batch_size}); raise the caps")
    # checked in this order on resume: a new tokenizer is named as such, not as new data
    identity = {"version": STATE_VERSION, "split": split, "tokenizer_sha256": store.tokenizer_sha256,
                "data_fingerprint": store.fingerprint, "index_version": INDEX_VERSION,
                "seq_len": seq_len, "raw_len": raw_len, "seed": seed, "global_batch_size": global_batch_size,
                "eval_documents": cfg.eval_documents, "mixture_hash": mixture.fingerprint()}
    if any(isinstance(w, InstructionWindows) for w in train):
        identity["instruction_index_version"] = INSTRUCTION_INDEX_VERSION
    common = dict(identity=identity, micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size,
                  num_workers=cfg.num_workers, source=source, mixture_weights=mixture.weights)
    if split == "train":
        stop = None if mixture.total_samples is None else \
            mixture.total_samples // global_batch_size * global_batch_size  # whole global batches only
        return PretrainLoader(SampleDataset(languages, train, mixture), collator, split=split, stop=stop, **common)
    held_out = [entry_windows(store.languages[lang], splits[lang][1], raw_len, seed, source.special,
                              shuffle=False) for lang in languages]
    index = EvalIndex([w.samples_per_epoch for w in held_out])
    step = micro_batch_size * dp_size
    stop = math.ceil(index.total_samples / step) * step
    return PretrainLoader(SampleDataset(languages, held_out, index), collator, split=split, stop=stop, **common)
