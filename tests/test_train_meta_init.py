"""train.init_device=meta: the model is built on the meta device, parallelized, then only the local
shards are allocated and initialized (pretrain/parallel/materialize.py). The values equal the full
build's under the same seed, so a meta run reproduces a full run step for step and resumes exactly.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pretrain.config import ConfigError
from pretrain.model.presets import ModelSection
from pretrain.train.config import load_config
from pretrain.model.glm import GLMModel
from pretrain.parallel.materialize import materialize
from pretrain.train.setup import validate_topology
from tests.test_train_distributed import STEPS, base_config, losses, records, resume_from, train  # noqa: F401
from tests.test_train_units import SMOKE

# deepnorm + xavier (GLM-130B rules) and an untied GQA SwiGLU RMSNorm model (GLM-4 rules), tiny sizes
ARCHS = {
    "glm-tiny": {},  # GLM-1 rules: learned 2-D positions, tied head, LayerNorm, GeLU
    "deepnorm": {"norm_placement": "deepnorm", "position_encoding": "rope_1d"},
    "glm4-like": {"tie_embeddings": False, "num_kv_heads": 2, "position_encoding": "rope_1d",
                  "partial_rotary_factor": 0.5, "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
}


def tiny(arch: str, preset: str = "glm-tiny"):
    return ModelSection.from_section({"preset": preset, **ARCHS[arch]}, arch).resolve(vocab_size=256)


def full_init(cfg, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(GLMModel(cfg).named_parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_build_then_materialize_equals_the_full_build(arch):
    cfg = tiny(arch)
    with torch.device("meta"):
        model = GLMModel(cfg)
    torch.manual_seed(99)  # materialize seeds by itself
    materialize(model, torch.device("cpu"), seed=3)
    expected = full_init(cfg)
    got = dict(model.named_parameters())
    assert list(got) == list(expected)
    for name, param in got.items():
        assert param.device.type == "cpu" and torch.equal(param, expected[name]), name


def test_materialize_refuses_a_model_with_buffers():
    with torch.device("meta"):
        model = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"buffers \['running_mean', 'running_var', 'num_batches_tracked'\]"):
        materialize(model, torch.device("cpu"), seed=0)


@pytest.mark.parametrize("overrides, message", [
    (["train.init_device=cuda"], "train.init_device: 'cuda' is not one of ['full', 'meta']"),
])
def test_bad_init_device_fails_at_load(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, overrides)
    assert message in str(err.value)


def test_meta_init_with_deepspeed_is_refused_with_a_fix():
    cfg = load_config(SMOKE, ["train.init_device=meta", "parallel.engine=deepspeed", "parallel.tp=1"])
    with pytest.raises(ConfigError, match="train.init_device=meta needs parallel.engine=torch"):
        validate_topology(cfg, 1)


# --- on a one-process gloo group: parameters are DTensors (FSDP2 at dp=1) -------------------------------
@pytest.fixture
def mesh(single_process_env):
    from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed
    init_distributed("cpu")
    yield build_mesh("cpu", ParallelDims(1, 1))
    dist.destroy_process_group()


def parallelized_on_meta(cfg, mesh) -> GLMModel:
    from pretrain.parallel.parallelize import parallelize
    with torch.device("meta"):
        model = GLMModel(cfg)
    return parallelize(model, mesh, sequence_parallel=False, activation_checkpointing=True, compile=False,
                       param_dtype=torch.float32, reshard_after_forward=True)


def test_sharded_materialize_equals_the_full_build(mesh):
    from torch.distributed.tensor import DTensor
    cfg = tiny("glm4-like")
    model = parallelized_on_meta(cfg, mesh)
    materialize(model, torch.device("cpu"), seed=3)
    expected = full_init(cfg)
    for name, param in model.named_parameters():
        assert isinstance(param, DTensor), name
        assert torch.equal(param.full_tensor(), expected[name.replace("._checkpoint_wrapped_module", "")]), name


def test_parallelized_glm_10b_on_meta_holds_no_storage(mesh):
    model = parallelized_on_meta(ModelSection.from_section({"preset": "glm-10b"}, "m").resolve(vocab_size=50304),
                                 mesh)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) > 9e9
    assert all(p.to_local().is_meta for p in params) and not list(model.buffers())


# --- under torchrun ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_meta_init_under_tp2_reproduces_the_full_build_and_resumes(base_config, tmp_path):  # noqa: F811
    meta = ("parallel.tp=2", "train.init_device=meta")
    run = train(base_config, tmp_path / "meta", 2, *meta)
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(v)) for v in got.values()) and got[STEPS] < got[1] - 0.5
    # same seed, the other build path: bit-identical losses and grad norms at every step
    full = train(base_config, tmp_path / "full", 2, "parallel.tp=2")
    numbers = lambda run_dir: [(r["step"], r["loss"], r["grad_norm"], r.get("eval/loss")) for r in records(run_dir)]
    assert numbers(run) == numbers(full)
    resumed = losses(train(base_config, resume_from(run, 5, tmp_path / "resumed"), 2, *meta))
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    assert all(resumed[s] == got[s] for s in resumed), (resumed, got)


@pytest.mark.slow
def test_meta_init_on_a_2d_mesh_equals_the_full_build():
    """dp=2 x tp=2 (glm-4-9b.yaml's layout: TP + sequence parallel, FSDP2 over dp, whose dim-0 shards of
    TP-sharded weights are _StridedShard) on 4 gloo processes: every parameter equals the full build."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
               "-m", "tests.distributed.meta_init_2d"]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
