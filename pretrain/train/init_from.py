"""``train.init_from``: start a run from existing weights (continued pretraining) with a fresh optimizer
at step 0, under any (dp, tp) layout and either engine.

The source is a run directory (its latest complete checkpoint, e.g. one made by ``import-hf``) or a
transformers GLM-4 / GLM-1 directory. Before any weight is read, every rank checks that the source
fits the run: the same architecture (fields that only act in training, dropout, init_std, the
attention backend, may differ, and so may max_position_embeddings under RoPE), and a tokenizer that
gives every id the checkpoint knows the same token. A run vocabulary *larger* than the checkpoint's
(the run's tokenizer appended GLM special tokens, or pads further) is resized: the new rows of the
embedding (and of an untied head) start as the mean of the checkpoint's rows, so no new token starts
out likelier than the average one (logged). A smaller one is refused: it would drop trained rows.

Rank 0 alone reads the weights (a full copy on the CPU) and ``set_model_state_dict`` broadcasts them
into each rank's shards: DTensor TP + FSDP2 after sharding, or the plain model before DeepSpeed takes it.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from pretrain.config import ConfigError
from pretrain.data.tokenizer import load_tokenizer
from pretrain.model.config import ModelConfig
from pretrain.model.glm import GLMModel
from pretrain.model.hf import check_state_dict, read_checkpoint
from pretrain.train.agreement import raise_if_any_rank_failed
from pretrain.train.checkpoint import latest_checkpoint
from pretrain.train.config import Config
from pretrain.train.run_dir import load_trained_model, resolved_model_config, run_tokenizer

logger = logging.getLogger(__name__)

# ModelConfig fields that only act in training or initialization: they may differ from the source's
TRAINING_ONLY = ("dropout", "attention_dropout", "init_std", "attention_backend", "embedding_grad_shrink")
_VOCAB_ROWS = ("embed_tokens.weight", "lm_head.weight")


@dataclasses.dataclass
class Source:
    path: Path
    kind: str  # "run" or "hf"
    config: ModelConfig
    tokenizer: Tokenizer | None


def open_source(path: str | Path) -> Source:
    """What ``path`` holds, without reading its weights (every rank does this)."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return Source(path, "run", resolved_model_config(path), run_tokenizer(path))
    if (path / "config.json").is_file():
        tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
        return Source(path, "hf", read_checkpoint(path, weights=False).config, tokenizer)
    raise ConfigError(f"train.init_from={path} is neither a run directory (config.yaml) nor a transformers "
                      f"checkpoint (config.json)")


def check_fits(source: Source, cfg: ModelConfig, tokenizer: Tokenizer) -> None:
    """ConfigError naming the first field or token id where ``source`` does not fit the run."""
    where = f"train.init_from={source.path}"
    free = {*TRAINING_ONLY, "vocab_size"} | ({"max_position_embeddings"} if cfg.position_encoding != "learned_2d"
                                            else set())
    for field in dataclasses.fields(ModelConfig):
        theirs, ours = getattr(source.config, field.name), getattr(cfg, field.name)
        if field.name not in free and theirs != ours:
            raise ConfigError(f"{where}: its model has {field.name}={theirs!r}, this run's has {ours!r}; set "
                              f"model.{field.name}={theirs!r} (the model section of its config rebuilds it)")
    if cfg.vocab_size < source.config.vocab_size:
        raise ConfigError(f"{where}: its vocabulary has {source.config.vocab_size} rows, this run's model "
                          f"{cfg.vocab_size}; set model.vocab_size={source.config.vocab_size} (rows are never dropped)")
    if source.tokenizer is None:
        logger.warning("%s has no tokenizer: cannot check that the run's tokenizer gives its ids the same tokens",
                       source.path)
        return
    theirs = {i: t for t, i in source.tokenizer.get_vocab(with_added_tokens=True).items()}
    ours = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    differing = sorted(i for i in theirs.keys() & ours.keys() if theirs[i] != ours[i])
    if differing:
        first = differing[0]
        raise ConfigError(f"{where}: its tokenizer and this run's disagree on {len(differing)} token ids (id {first} "
                          f"is {theirs[first]!r} there, {ours[first]!r} here), so its weights would be read for the "
                          f"wrong tokens; preprocess the data with {source.path}'s tokenizer")


def read_state(source: Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The source's weights at the run's shapes (vocabulary rows appended, see the module docstring)."""
    if source.kind == "run":
        state = load_trained_model(source.path).state_dict()
    else:
        state = read_checkpoint(source.path).state_dict
    added = cfg.vocab_size - source.config.vocab_size
    if added:
        for name in _VOCAB_ROWS:
            if name in state:
                rows = state[name]
                state[name] = torch.cat([rows, rows.mean(0, keepdim=True).expand(added, -1)])
        logger.info("init_from: vocabulary %d -> %d rows; the %d new rows start as the mean of the checkpoint's",
                    source.config.vocab_size, cfg.vocab_size, added)
    return state


def initial_weights(run: Config, cfg: ModelConfig, tokenizer: Tokenizer) -> dict[str, torch.Tensor] | None:
    """Collective. The weights to start from on rank 0 ({} on the others); None without train.init_from or
    when the run resumes (its own checkpoint wins). A problem is raised as a ConfigError on every rank
    (never a rank left waiting)."""
    if run.train.init_from is None:
        return None
    if run.checkpoint.resume_from != "none" and latest_checkpoint(run.checkpoint_dir()) is not None:
        logger.info("init_from: ignored, the run resumes from its own checkpoint in %s", run.checkpoint_dir())
        return None
    source = open_source(run.train.init_from)
    check_fits(source, cfg, tokenizer)
    state, error = {}, None
    if dist.get_rank() == 0:
        try:
            state = read_state(source, cfg)
            with torch.device("meta"):
                check_state_dict(GLMModel(cfg), state, f"train.init_from={source.path}")
        except (ValueError, OSError, RuntimeError) as err:
            error = f"train.init_from={source.path}: {err}"
    raise_if_any_rank_failed(None if error is None else ConfigError(error), ConfigError)
    logger.info("init_from: starting from the weights of %s (%s), fresh optimizer, step 0", source.path, source.kind)
    return state


def load_initial_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Collective: rank 0's full ``state`` into ``model``, plain or sharded (DTensor TP + FSDP2)."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                strict=True))
