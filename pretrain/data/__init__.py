"""Data: tokenizer training, tokenize-once shards, multilingual mixing, a resumable rank-sharded loader."""
import importlib

_EXPORTS = {"DataConfig": "config", "prepare_embedded_corpus": "corpus", "build_loader": "loader", "glm_collator": "loader", "open_data": "loader",
            "PretrainLoader": "loader", "DataExhaustedError": "loader", "ResumeMismatchError": "loader"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # Lazy (PEP 562): the loader imports torch and the objective, which the tokenizer and
    # preprocess commands do not need.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pretrain.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pretrain.data.{_EXPORTS[name]}"), name)
