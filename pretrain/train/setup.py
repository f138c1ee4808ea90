"""Everything the loop needs, built from a Config in an order that fails early: topology checks,
then data (the tokenizer fixes the vocabulary), then the model, parallelized."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from pretrain.config import ConfigError
from pretrain.parallel.context import ContextParallelAttention, check_context
from pretrain.parallel.engine import Engine, TorchEngine
from pretrain.parallel.materialize import materialize
from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed, loss_mesh, world_size_from_env
from pretrain.parallel.parallelize import parallelize
from pretrain.parallel.pipeline import Pipeline, check_pipeline, pipeline_parts
from pretrain.parallel.tp import check_tp_divisibility
from pretrain.train.config import Config
from pretrain.train.init_from import initial_weights, load_initial_weights
from pretrain.train.optim import build_optimizer

if TYPE_CHECKING:
    from pretrain.model.config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class Setup:
    device: torch.device
    rank: int
    dims: ParallelDims  # (pp, dp, cp, tp) sizes
    dp_group: dist.ProcessGroup  # ranks that read different rows
    loss_group: dist.ProcessGroup  # ranks whose loss terms add up (pp x dp x cp)
    cp_rank: int  # this rank's share of each row under context parallelism (context.shard_rows)
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
    parallel = cfg.parallel
    dims = ParallelDims(world_size, parallel.tp, parallel.pp, parallel.cp)
    train = cfg.train
    if train.init_device == "meta" and cfg.parallel.engine == "deepspeed":
        raise ConfigError("train.init_device=meta needs parallel.engine=torch (the deepspeed engine takes a "
                          "materialized model); set parallel.engine=torch or train.init_device=full")
    if cfg.eval.downstream and (parallel.pp > 1 or parallel.cp > 1):
        logger.warning("eval.downstream is skipped: it scores with the whole model on whole rows, which parallel.pp="
                       "%d / parallel.cp=%d split (the held-out loss is still measured); score the run's checkpoint "
                       "with pp=cp=1 instead", parallel.pp, parallel.cp)
    if train.init_from and train.init_device == "meta" and parallel.pp > 1:
        raise ConfigError("train.init_from with train.init_device=meta loads rank 0's weights into one model, not "
                          "into pipeline stages; set train.init_device=full (the weights are loaded before the split)")
    try:
        dims.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    per_step = train.micro_batch_size * dims.dp
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by train.micro_batch_size="
            f"{train.micro_batch_size} x data-parallel size {dims.dp} (world {world_size} / pp x cp x tp "
            f"{dims.pp * dims.cp * dims.tp}); make global_batch_size a multiple of {per_step}")
    # A vocabulary taken from the tokenizer is only known after the loader: stand in one that tp
    # divides here; build_setup checks the real one.
    model_cfg = cfg.model.resolve(vocab_size=cfg.model.vocab_multiple * cfg.parallel.tp)
    _check_model_fits(model_cfg, cfg)
    try:
        check_pipeline(parallel, model_cfg.num_layers, train.global_batch_size // per_step)
        check_context(parallel, train.seq_len, model_cfg.attention_backend, model_cfg.attention_dropout)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return dims


def _check_model_fits(model_cfg: "ModelConfig", cfg: Config) -> None:
    try:
        check_tp_divisibility(model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.ffn_hidden_size,
                              model_cfg.vocab_size, cfg.train.seq_len, cfg.parallel.tp,
                              cfg.parallel.sequence_parallel)
    except ValueError as err:
        padded = "vocab_size" not in cfg.model.fields and str(err).startswith("model.vocab_size")
        hint = f" (it is the tokenizer's, padded to model.vocab_multiple={cfg.model.vocab_multiple})" if padded else ""
        raise ConfigError(f"{err}{hint}") from err
    if model_cfg.position_encoding == "learned_2d" and cfg.train.seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_position_embeddings="
                          f"{model_cfg.max_position_embeddings} of the learned position tables; lower seq_len "
                          f"or raise max_position_embeddings")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_setup(cfg: Config, preflight: Callable[[], None] | None = None) -> Setup:
    """``preflight``: checks that need the process group and come before the data and the model."""
    from pretrain.data.loader import build_loader, glm_collator, open_data
    from pretrain.model.glm import GLMModel
    from pretrain.objectives import declared_special_tokens, raw_length, resolve_gmask_positions

    dims = validate_topology(cfg, world_size_from_env())
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device.type)
    if preflight is not None:
        preflight()
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

    def loader(split: str, objective, seed: int):
        """(collator, loader): the objective fixes both the masks and the raw window length."""
        collator = glm_collator(source, objective, seq_len=train.seq_len, seed=seed,
                                global_batch_size=train.global_batch_size)
        return collator, build_loader(cfg.data, collator, seq_len=train.seq_len,
                                      raw_len=raw_length(objective, train.seq_len),
                                      global_batch_size=train.global_batch_size,
                                      micro_batch_size=train.micro_batch_size, dp_rank=dp_rank, dp_size=dims.dp,
                                      seed=seed, split=split, source=source)

    # objective.gmask_positions=auto follows the model's position encoding (the vocabulary does not change it)
    position_encoding = cfg.model.resolve(vocab_size=source.vocab_size).position_encoding
    objective = resolve_gmask_positions(cfg.objective, position_encoding)
    eval_objective = resolve_gmask_positions(cfg.eval_objective(), position_encoding)
    collator, train_loader = loader("train", objective, train.seed)
    eval_collator, eval_loader = loader("valid", eval_objective, cfg.eval.seed) if cfg.eval.interval \
        else (collator, None)

    model_cfg = cfg.model.resolve(vocab_size=train_loader.vocab_size)
    if model_cfg.vocab_size < train_loader.vocab_size:
        raise ConfigError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                          f"{train_loader.vocab_size}; raise it (or remove it to use the tokenizer's)")
    _check_model_fits(model_cfg, cfg)

    initial = initial_weights(cfg, model_cfg, source.tokenizer)  # None: random init, or the run resumes
    if train.init_device == "meta":
        with torch.device("meta"):  # shapes only: initialized after sharding (build_engine)
            model = GLMModel(model_cfg)
    else:
        torch.manual_seed(train.seed)  # the same full initialization on every rank, then sharded
        model = GLMModel(model_cfg).to(device)
        if initial is not None:  # before sharding: the deepspeed engine copies the weights it is given
            load_initial_weights(model, initial)
    n_params = model.num_params()
    accumulation_steps = train.global_batch_size // (train.micro_batch_size * dims.dp)
    engine = build_engine(cfg, model, mesh, dims, accumulation_steps, resolve_dtype(train.dtype, device), device)
    if initial is not None and train.init_device == "meta":
        load_initial_weights(engine.model, initial)
    logger.info("model %s: %.2fM parameters, %s engine, pp=%d dp=%d cp=%d tp=%d, %d micro-batches per step",
                cfg.model.preset or "custom", n_params / 1e6, engine.name, dims.pp, dims.dp, dims.cp, dims.tp,
                accumulation_steps)
    return Setup(device=device, rank=dist.get_rank(), dims=dims, dp_group=mesh["dp"].get_group(),
                 loss_group=loss_mesh(mesh).get_group(), cp_rank=mesh["cp"].get_local_rank(), engine=engine,
                 model_cfg=model_cfg, data=source, loader=train_loader,
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
    parallel = cfg.parallel
    pp_rank = mesh["pp"].get_local_rank()
    parts, stages = pipeline_parts(model, parallel, pp_rank) if parallel.pp > 1 else ([model], [0])
    for part in parts:
        parallelize(part, mesh, sequence_parallel=parallel.sequence_parallel,
                    activation_checkpointing=cfg.train.activation_checkpointing, compile=cfg.train.compile,
                    param_dtype=dtype, reshard_after_forward=parallel.fsdp == "full")
        if cfg.train.init_device == "meta":
            materialize(part, device, cfg.train.seed, whole=model if parallel.pp > 1 else None)
        if parallel.cp > 1:
            part.build_attention = ContextParallelAttention(mesh["cp"].get_group())
    optimizers = [build_optimizer(part, cfg.train) for part in parts]
    if parallel.pp == 1:
        return TorchEngine(parts, optimizers, reduce_every_microbatch=parallel.reduce_every_microbatch)
    pipeline = Pipeline(parts, stages, parallel.pp_stages, mesh, parallel.pp_schedule,
                        parallel.pp_microbatches or accumulation_steps, device, tied=model.lm_head is None)
    return TorchEngine(parts, optimizers, pipeline, mesh["pp"].get_group())

