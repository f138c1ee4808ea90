"""Everything the loop needs, built from a Config in an order that fails early: topology checks,
then data (the tokenizer fixes the vocabulary), then the model, parallelized."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from pretrain.config import ConfigError
from pretrain.parallel.engine import Engine, TorchEngine
from pretrain.parallel.materialize import materialize
from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed, world_size_from_env
from pretrain.parallel.parallelize import parallelize
from pretrain.parallel.tp import check_tp_divisibility
from pretrain.train.config import Config
from pretrain.train.optim import build_optimizer

if TYPE_CHECKING:
    from pretrain.model.config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class Setup:
    device: torch.device
    rank: int
    dims: ParallelDims  # (dp, tp) sizes
    dp_group: dist.ProcessGroup
    engine: Engine  # owns the parallelized model and the optimizer
    model_cfg: "ModelConfig"
    data: object  # pretrain.data.loader.DataSource: the tokenizer in use and its special tokens
    loader: object  # pretrain.data.loader.PretrainLoader
    eval_loader: object | None
    strategy_names: tuple[str, ...]
    eval_strategy_names: tuple[str, ...]  # of cfg.eval_objective()
    accumulation_steps: int


def validate_topology(cfg: Config, world_size: int) -> ParallelDims:
    """Checks across config sections and those that need the world size; raises ConfigError saying what
    to change."""
    dims = ParallelDims(world_size, cfg.parallel.tp)
    train = cfg.train
    if train.init_device == "meta" and cfg.parallel.engine == "deepspeed":
        raise ConfigError("train.init_device=meta needs parallel.engine=torch (the deepspeed engine takes a "
                          "materialized model); set parallel.engine=torch or train.init_device=full")
    try:
        dims.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    per_step = train.micro_batch_size * dims.dp
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by train.micro_batch_size="
            f"{train.micro_batch_size} x data-parallel size {dims.dp} (world {world_size} / tp {dims.tp}); "
            f"make global_batch_size a multiple of {per_step}")
    # A vocabulary taken from the tokenizer is only known after the loader: stand in one that tp
    # divides here; build_setup checks the real one.
    _check_model_fits(cfg.model.resolve(vocab_size=64 * cfg.parallel.tp), cfg)
    return dims


def _check_model_fits(model_cfg: "ModelConfig", cfg: Config) -> None:
    try:
        check_tp_divisibility(model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.ffn_hidden_size,
                              model_cfg.vocab_size, cfg.train.seq_len, cfg.parallel.tp,
                              cfg.parallel.sequence_parallel)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if model_cfg.position_encoding == "learned_2d" and cfg.train.seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_position_embeddings="
                          f"{model_cfg.max_position_embeddings} of the learned position tables; lower seq_len "
                          f"or raise max_position_embeddings")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_setup(cfg: Config) -> Setup:
    from pretrain.data.loader import build_loader, glm_collator, open_data
    from pretrain.model.glm import GLMModel
    from pretrain.objectives import declared_special_tokens, raw_length

    dims = validate_topology(cfg, world_size_from_env())
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    mesh = build_mesh(device.type, dims)
    dp_rank = mesh["dp"].get_local_rank()
    train = cfg.train
    # Shards checked and tokenizer loaded once for both splits; one vocabulary for both objectives.
    try:
        source = open_data(cfg.data, declared_special_tokens(cfg.objective, cfg.eval_objective()))
    except ValueError as err:
        raise ConfigError(str(err)) from err

    def loader(split: str, objective):
        """(collator, loader): the objective fixes both the masks and the raw window length."""
        collator = glm_collator(source, objective, seq_len=train.seq_len, seed=train.seed,
                                global_batch_size=train.global_batch_size)
        return collator, build_loader(cfg.data, collator, seq_len=train.seq_len,
                                      raw_len=raw_length(objective, train.seq_len),
                                      global_batch_size=train.global_batch_size,
                                      micro_batch_size=train.micro_batch_size, dp_rank=dp_rank, dp_size=dims.dp,
                                      seed=train.seed, split=split, source=source)

    collator, train_loader = loader("train", cfg.objective)
    eval_collator, eval_loader = loader("valid", cfg.eval_objective()) if cfg.eval.interval else (collator, None)

    model_cfg = cfg.model.resolve(vocab_size=train_loader.vocab_size)
    if model_cfg.vocab_size < train_loader.vocab_size:
        raise ConfigError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                          f"{train_loader.vocab_size}; raise it (or remove it to use the tokenizer's)")
    _check_model_fits(model_cfg, cfg)

    if train.init_device == "meta":
        with torch.device("meta"):  # shapes only: initialized after sharding (build_engine)
            model = GLMModel(model_cfg)
    else:
        torch.manual_seed(train.seed)  # the same full initialization on every rank, then sharded
        model = GLMModel(model_cfg).to(device)
    n_params = model.num_params()
    accumulation_steps = train.global_batch_size // (train.micro_batch_size * dims.dp)
    engine = build_engine(cfg, model, mesh, dims, accumulation_steps, resolve_dtype(train.dtype, device), device)
    logger.info("model %s: %.2fM parameters, %s engine, dp=%d tp=%d, %d micro-batches per step",
                cfg.model.preset or "custom", n_params / 1e6, engine.name, dims.dp, dims.tp,
                accumulation_steps)
    return Setup(device=device, rank=dist.get_rank(), dims=dims,
                 dp_group=mesh["dp"].get_group(), engine=engine, model_cfg=model_cfg, data=source, loader=train_loader,
                 eval_loader=eval_loader, strategy_names=collator.strategy_names,
                 eval_strategy_names=eval_collator.strategy_names,
                 accumulation_steps=accumulation_steps)


def build_engine(cfg: Config, model: nn.Module, mesh: DeviceMesh, dims: ParallelDims, accumulation_steps: int,
                 dtype: torch.dtype, device: torch.device) -> Engine:
    if cfg.parallel.engine == "deepspeed":
        from pretrain.parallel.deepspeed_engine import DeepSpeedEngine, deepspeed_config
        config = deepspeed_config(cfg.parallel, dims, cfg.train.micro_batch_size, accumulation_steps,
                                  cfg.train.grad_clip, bf16=dtype == torch.bfloat16)
        return DeepSpeedEngine(model, build_optimizer(model, cfg.train), config, dims)
    model = parallelize(model, mesh, sequence_parallel=cfg.parallel.sequence_parallel,
                        activation_checkpointing=cfg.train.activation_checkpointing, compile=cfg.train.compile,
                        param_dtype=dtype, reshard_after_forward=cfg.parallel.fsdp == "full")
    if cfg.train.init_device == "meta":
        materialize(model, device, cfg.train.seed)
    return TorchEngine(model, build_optimizer(model, cfg.train), cfg.parallel.reduce_every_microbatch)

