"""Data: tokenizer training, tokenize-once shards, multilingual mixing, a resumable rank-sharded loader."""
from pretrain.data.config import DataConfig
from pretrain.data.corpus import prepare_embedded_corpus
from pretrain.data.loader import DataExhaustedError, PretrainLoader, ResumeMismatchError, build_loader

__all__ = ["DataConfig", "prepare_embedded_corpus", "build_loader", "PretrainLoader", "DataExhaustedError",
           "ResumeMismatchError"]
