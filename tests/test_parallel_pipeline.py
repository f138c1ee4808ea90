"""Pipeline and context parallelism in one process: stage splitting (the weighted split, the pruned
stage modules chained equal the whole model), the looped stage placement, and the topology checks
that refuse a layout before any work. The schedules themselves run in test_parallel_distributed.py."""
from __future__ import annotations

import pytest
import torch

from pretrain.config import ConfigError
from pretrain.parallel.config import ParallelConfig
from pretrain.parallel.pipeline import layers_per_stage, stage_indices, stage_layer_counts, stage_module
from pretrain.train.config import load_config
from pretrain.train.setup import validate_topology
from tests.test_model_glm import VARIANTS, logits_with, make_batch, make_model
from tests.test_train_units import SMOKE


@pytest.mark.parametrize("layers, stages, expected", [
    (70, 8, [8, 9, 9, 9, 9, 9, 9, 8]),  # GLM-130B on PP=8: one layer fewer on the embedding and head stages
    (4, 2, [2, 2]),
    (5, 2, [2, 3]),  # the remainder goes to the middle, then the head stage, then the embedding stage
    (7, 4, [1, 3, 2, 1]),
    (3, 1, [3]),
])
def test_layers_per_stage_weights_the_embedding_and_the_head(layers, stages, expected):
    assert layers_per_stage(layers, stages) == expected


def test_stage_split_refusals_name_the_fix():
    with pytest.raises(ValueError, match=r"4 layers cannot give each of 4 pipeline stages a layer .* set "
                                         r"parallel.pp_layers_per_stage"):
        layers_per_stage(4, 4)
    parallel = ParallelConfig(pp=2, pp_layers_per_stage=[1, 2])
    with pytest.raises(ValueError, match=r"pp_layers_per_stage=\[1, 2\] holds 3 layers; the model has num_layers=4"):
        stage_layer_counts(parallel, 4)
    assert stage_layer_counts(ParallelConfig(pp=2, pp_virtual_stages=2, pp_schedule="interleaved_1f1b"), 6) == \
        [1, 2, 2, 1]


def test_looped_stage_placement():
    assert [stage_indices(rank, 2, 2) for rank in range(2)] == [[0, 2], [1, 3]]
    assert [stage_indices(rank, 4, 1) for rank in range(4)] == [[0], [1], [2], [3]]


@pytest.mark.parametrize("variant", ["glm1", "glm4"])  # tied head + learned 2-D positions; untied + RoPE
def test_stages_chained_equal_the_whole_model(variant, glm_random_layout):
    model = make_model(variant, num_layers=4)
    batch = make_batch(glm_random_layout, 0)
    counts = [1, 2, 0, 1]  # an empty stage passes hidden states through
    parts = [stage_module(model, stage, counts) for stage in range(len(counts))]
    names = [set(dict(part.named_parameters())) for part in parts]
    tied = model.lm_head is None
    assert "embed_tokens.weight" in names[0] and ("embed_tokens.weight" in names[3]) == tied
    assert not any(n.startswith(("norm", "lm_head", "embed_tokens")) for n in names[1] | names[2])
    assert {n.split(".")[1] for part in names for n in part if n.startswith("layers.")} == {"0", "1", "2", "3"}
    # every parameter keeps its FQN, and each lives on exactly one stage except the tied head's copy
    expected = dict(model.named_parameters())
    assert sum(len(n) for n in names) == len(expected) + tied and set().union(*names) == set(expected)
    hidden = batch["input_ids"]
    for part in parts:
        hidden = logits_with(part, "sdpa", {**batch, "input_ids": hidden})
    torch.testing.assert_close(hidden, logits_with(model, "sdpa", batch), atol=0, rtol=0)


@pytest.mark.parametrize("world, overrides, message", [
    (4, ["parallel.pp=2", "parallel.tp=2", "parallel.cp=2"],
     "world size 4 is not divisible by parallel.pp=2 x parallel.cp=2 x parallel.tp=2 = 8; launch a multiple of 8"),
    (2, ["parallel.pp=2", "train.global_batch_size=8", "train.micro_batch_size=2", "parallel.pp_microbatches=3"],
     "parallel.pp_microbatches=3 does not divide the 4 micro-batches of a step per rank"),
    (2, ["parallel.pp=2", "model.num_layers=2", "parallel.pp_schedule=interleaved_1f1b",
         "parallel.pp_virtual_stages=2"], "2 layers cannot give each of 4 pipeline stages a layer"),
    (2, ["parallel.pp=2", "train.global_batch_size=10", "train.micro_batch_size=2", "model.num_layers=4",
         "parallel.pp_schedule=interleaved_1f1b", "parallel.pp_virtual_stages=2",
         "parallel.pp_layers_per_stage=[1,1,1,1]"],
     "5 per schedule run is not a multiple of 2 rounds of pp=2"),
    (2, ["parallel.cp=2", "train.seq_len=90"], "train.seq_len=90 is not divisible by 2 x parallel.cp = 4"),
    (8, ["parallel.cp=2", "parallel.tp=4", "parallel.sequence_parallel=true", "train.seq_len=68"],
     "train.seq_len / parallel.cp = 34 is not divisible by parallel.tp=4"),
    (2, ["parallel.cp=2", "model.attention_backend=dense"], "model.attention_backend=dense has no context-parallel"),
])
def test_invalid_pipeline_and_context_layouts_are_rejected(world, overrides, message):
    cfg = load_config(SMOKE, ["parallel.tp=1", *overrides])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_topology(cfg, world)


@pytest.mark.parametrize("overrides, message", [
    (["parallel.engine=deepspeed", "parallel.pp=2"],
     "pp=2: the deepspeed engine has no pipeline parallelism here; use parallel.engine=torch"),
    (["parallel.engine=deepspeed", "parallel.cp=2"],
     "cp=2: the deepspeed engine has no context parallelism here; use parallel.engine=torch"),
    (["parallel.pp_virtual_stages=2"], "pp_virtual_stages=2 needs pp_schedule=interleaved_1f1b"),
    (["parallel.pp=2", "parallel.pp_layers_per_stage=[1]"], "must hold pp x pp_virtual_stages = 2 counts"),
    (["parallel.pp=2", "parallel.reduce_every_microbatch=true"], "reduce_every_microbatch with pp > 1"),
])
def test_bad_parallel_sections_fail_at_load(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, overrides)
    assert message in str(err.value)


def test_valid_layouts_give_dp():
    dims = validate_topology(load_config(SMOKE, ["parallel.pp=2", "parallel.cp=2", "parallel.tp=2",
                                                 "train.global_batch_size=8", "train.micro_batch_size=2"]), 16)
    assert (dims.pp, dims.dp, dims.cp, dims.tp) == (2, 2, 2, 2)


@pytest.mark.parametrize("arch", ["glm-tiny", "deepnorm", "glm4-like"])
def test_meta_stages_materialize_to_their_part_of_the_full_build(arch):
    """train.init_device=meta under pp: every stage gets exactly the full build's values (the other
    stages' random draws are consumed, not skipped), so layouts stay interchangeable."""
    from pretrain.model.glm import GLMModel
    from pretrain.parallel.materialize import materialize
    from tests.test_train_meta_init import full_init, tiny
    cfg = tiny(arch)
    with torch.device("meta"):
        whole = GLMModel(cfg)
    expected = full_init(cfg)
    for stage in range(2):
        part = stage_module(whole, stage, [1, 1])
        materialize(part, torch.device("cpu"), seed=3, whole=whole)
        for name, param in part.named_parameters():
            assert torch.equal(param, expected[name]), (arch, stage, name)
