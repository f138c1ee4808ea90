"""The embedded default corpus: real sentences in 22 languages from mimesis (a declared dependency,
imported only when this corpus is asked for: ``data.corpus: embedded``, ``tokenizer train --embedded``).

mimesis ships curated text per locale (``mimesis/datasets/<locale>/text.json``: encyclopedic
sentences, quotes, proverbs; English also has trivia questions). Sizes are very skewed (a few dozen
Korean or Persian sentences, thousands of Dutch and Spanish ones), which exercises temperature
sampling. Consecutive sentences are grouped into documents. Nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import datasets

from pretrain.data.preprocess import preprocess
from pretrain.data.sources import Plan, dataset_input
from pretrain.data.store import MANIFEST, TOKENIZER
from pretrain.data.tokenizer import sample_training_text, save_tokenizer, train_tokenizer

# zh/ja/ko: CJK; ar/fa: right-to-left; el/ru/uk: Greek and Cyrillic.
LANGUAGES = ("ar", "de", "el", "en", "es", "fa", "fi", "fr", "hr", "hu", "it", "ja", "ko", "nl", "no",
             "pl", "pt", "ru", "sv", "tr", "uk", "zh")
SENTENCES_PER_DOCUMENT = 4
MIN_SENTENCE_CHARS = 8  # mimesis has placeholders like "Test" / "تست" in some locales
CORPUS_VERSION = 2  # 2: shard format 2


def embedded_documents() -> dict[str, list[str]]:
    root = resources.files("mimesis") / "datasets"  # mimesis >= 18 (Arabic arrived in 18)
    documents = {}
    for lang in LANGUAGES:
        data = json.loads((root / lang / "text.json").read_text(encoding="utf-8"))
        sentences = [s.strip() for key in ("text", "quotes", "questions") for s in data.get(key, [])
                     if len(s.strip()) >= MIN_SENTENCE_CHARS]
        joiner = "" if lang in ("ja", "zh") else " "
        documents[lang] = [joiner.join(sentences[i:i + SENTENCES_PER_DOCUMENT])
                           for i in range(0, len(sentences), SENTENCES_PER_DOCUMENT)]
    return documents


@contextlib.contextmanager
def _quiet_datasets():
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def prepare_embedded_corpus(cache_dir: str | Path, vocab_size: int = 2048) -> Path:
    """Build (once) and return the preprocessed embedded corpus directory (manifest.json + tokenizer.json).

    Safe under concurrency: each caller builds in its own temporary directory and publishes it with
    one atomic rename; a caller that loses the race discards its copy (the builds are identical).
    """
    import mimesis

    cache_dir = Path(cache_dir)
    final = cache_dir / f"embedded-v{CORPUS_VERSION}-mimesis{mimesis.__version__}-vocab{vocab_size}"
    if (final / MANIFEST).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        documents = embedded_documents()
        lines = sample_training_text(documents, alpha=0.3, max_chars=1 << 22, seed=0)
        save_tokenizer(train_tokenizer(lines, vocab_size), staging / TOKENIZER)
        plan = Plan(tuple(dataset_input(lang, datasets.Dataset.from_dict({"text": docs}), f"embedded-{lang}")
                          for lang, docs in documents.items()))
        with _quiet_datasets():
            preprocess(plan, staging / TOKENIZER, staging, progress=False)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
