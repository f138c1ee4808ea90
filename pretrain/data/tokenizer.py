"""Tokenizers: our byte-level BPE, any existing one (a tokenizer.json, or a transformers tokenizer
directory through its fast backend), and the GLM special tokens found by role in it (docs/contracts.md §3).

Byte-level BPE never produces an unknown token, so any script works; ours registers the core special
tokens first and is padded with reserved tokens to a multiple of 128 (the model's vocabulary is padded
separately, ``model.vocab_multiple``). Literal special-token strings in corpus text ("[MASK]" in a web
page) are encoded as text: only our code puts special ids into a sequence, so the shards never hold a
special id, wherever the tokenizer puts its specials (GLM-4's sit above id 150,000).

A tokenizer's identity is ``tokenizer_fingerprint``: what decides the ids of a text (normalizer,
pre-tokenizer, model, added tokens), not how the JSON is laid out, so a tokenizer directory and its
tokenizer.json have the same one.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pretrain.data.mixture import language_seed, temperature_weights
from pretrain.tokens import CORE_ROLES, ROLE_ALIASES, SpecialTokens

RESERVED_MULTIPLE = 128  # our tokenizer's size is a multiple of this (reserved tokens fill it up)
RESERVED_TOKEN = "<|reserved_{}|>"
# the parts of a tokenizer.json that decide which ids a text gets
_ENCODING_PARTS = ("normalizer", "pre_tokenizer", "model", "added_tokens")


def _empty_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    # Single digits keep numbers compositional; ByteLevel makes every byte representable.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def sample_training_text(texts: Mapping[str, Sequence[str]], alpha: float, max_chars: int,
                         seed: int) -> Iterator[str]:
    """Temperature-sampled lines: language l gets a q_l ∝ p_l^alpha share (p over characters) of the budget.

    Small languages are repeated (upsampled) exactly as the training mixture will repeat them, so
    their merges are learned (mBERT/XLM practice). Deterministic in ``seed``.
    """
    chars = {lang: sum(len(t) for t in lines) for lang, lines in texts.items() if lines}
    budget = min(max_chars, sum(chars.values()))
    for lang, share in temperature_weights(chars, alpha).items():
        lines = texts[lang]
        rng = np.random.default_rng([seed, language_seed(lang)])
        target, taken = share * budget, 0
        while taken < target:
            for index in rng.permutation(len(lines)):
                if taken >= target:
                    break
                taken += len(lines[index])
                yield lines[index]


def train_tokenizer(lines: Iterable[str], vocab_size: int, progress: bool = False) -> Tokenizer:
    """Byte-level BPE on ``lines``; ``progress``: the trainer's progress bars on stderr (reading, merges)."""
    if vocab_size < 256 + len(CORE_ROLES):
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens "
                         f"plus {len(CORE_ROLES)} special tokens")
    tokenizer = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(CORE_ROLES.values()),
        max_token_length=16)  # bounds runaway CJK / repeated-character merges
    tokenizer.train_from_iterator(lines, trainer=trainer)
    size = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([AddedToken(RESERVED_TOKEN.format(i), special=True)
                                  for i in range(-size % RESERVED_MULTIPLE)])
    tokenizer.encode_special_tokens = True
    return tokenizer


def resolve_special_tokens(tokenizer: Tokenizer, declared: Mapping[str, str] = {},
                           names: Mapping[str, str] = {}) -> SpecialTokens:
    """Every core role, and the roles strategies ``declared`` (role -> token string), found by name in
    ``tokenizer``; a role not found is added at the end of the vocabulary as a special token (in
    role order, so the same inputs give the same ids). ``names`` overrides a role's token string.

    Mutates ``tokenizer`` (the added tokens). Raises ValueError when two roles find the same id."""
    unknown = sorted(set(names) - set(CORE_ROLES) - set(declared))
    if unknown:
        raise ValueError(f"special token names given for unknown role(s) {unknown}; roles are "
                         f"{[*CORE_ROLES, *declared]}")
    ids = {}
    for role, default in {**CORE_ROLES, **declared}.items():
        candidates = (names[role],) if role in names else (default, *ROLE_ALIASES.get(role, ()))
        found = next((i for i in map(tokenizer.token_to_id, candidates) if i is not None), None)
        if found is None:
            tokenizer.add_special_tokens([AddedToken(candidates[0], special=True)])
            found = tokenizer.token_to_id(candidates[0])
        ids[role] = found
    special = SpecialTokens(**{role: ids.pop(role) for role in CORE_ROLES}, extra=ids)
    try:
        return special.validate(tokenizer.get_vocab_size())
    except ValueError as err:
        raise ValueError(f"{err} (set data.special_tokens to give a role another token string)") from None

def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> str:
    """Write tokenizer.json; returns its sha256 (the identity recorded in manifests and checkpoints)."""
    path = Path(path)
    data = tokenizer.to_str(pretty=True).encode("utf-8")
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def temporary_path(path: Path) -> Path:
    """A hidden sibling name no other process, or host sharing the directory, writes to."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a half-written one."""
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    tmp.replace(path)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json file, or a local transformers tokenizer directory (``AutoTokenizer``, its fast
    ``tokenizers`` backend: the rest of the pipeline only knows ``tokenizers.Tokenizer``)."""
    path = Path(path)
    if path.is_dir():
        tokenizer = _from_transformers(path)
    elif not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist; give a tokenizer.json, a transformers tokenizer "
                                f"directory, or train one with `python -m pretrain tokenizer train`")
    else:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exception on malformed JSON
            raise ValueError(f"tokenizer file {path} is not a valid tokenizer.json: {err}") from err
    tokenizer.encode_special_tokens = True  # not serialized in tokenizer.json: set on every load
    return tokenizer


def _from_transformers(directory: Path) -> Tokenizer:
    """The fast backend of ``AutoTokenizer.from_pretrained(directory)``. Refused, with a one-line reason:
    no transformers installed, a tokenizer that needs remote code (we run none), a slow-only (Python)
    tokenizer without a ``tokenizers`` backend."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError(f"{directory} is a directory: reading a transformers tokenizer needs the transformers "
                         f"package (pip install transformers), or give its tokenizer.json") from None
    try:
        loaded = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # missing files, remote code, sentencepiece missing: transformers' own reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"transformers cannot load a tokenizer from {directory} ({reason}); give a directory "
                         f"with a tokenizer.json or the tokenizer.json itself") from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(f"{directory} holds a slow (Python) {type(loaded).__name__} without a tokenizers backend; "
                         f"save a fast version (its tokenizer.json) and give that")
    return backend


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Hash of what decides the ids of a text: normalizer, pre-tokenizer, model (vocabulary, merges) and
    added tokens. Decoder, post-processor, padding and JSON layout do not change it."""
    parts = json.loads(tokenizer.to_str())
    payload = json.dumps([parts.get(key) for key in _ENCODING_PARTS], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
