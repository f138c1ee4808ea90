"""Run under torchrun with 4 processes (tests/test_train_meta_init.py): a model built on the meta device,
parallelized on a 2-D (dp=2, tp=2) mesh (TP + sequence parallel, then FSDP2 over dp, as glm-4-9b.yaml
runs) and materialized, holds on every rank exactly the full single-process initialization."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from pretrain.model.glm import GLMModel
from pretrain.model.presets import ModelSection
from pretrain.parallel.materialize import materialize
from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed
from pretrain.parallel.parallelize import parallelize

ARCH = {"preset": "glm-tiny", "tie_embeddings": False, "num_kv_heads": 2, "position_encoding": "rope_1d",
        "partial_rotary_factor": 0.5, "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def main() -> int:
    init_distributed("cpu")
    mesh = build_mesh("cpu", ParallelDims(dist.get_world_size(), tp=2))
    cfg = ModelSection.from_section(ARCH, "model").resolve(vocab_size=256)
    torch.manual_seed(3)
    expected = dict(GLMModel(cfg).named_parameters())
    with torch.device("meta"):
        model = GLMModel(cfg)
    parallelize(model, mesh, sequence_parallel=True, activation_checkpointing=True, compile=False,
                param_dtype=torch.float32, reshard_after_forward=True)
    materialize(model, torch.device("cpu"), seed=3)
    wrong = []
    for name, param in model.named_parameters():
        placements = tuple(param.placements)
        full = param.full_tensor()  # collective: every rank, same order
        reference = expected[name.replace("._checkpoint_wrapped_module", "")]
        if param.device_mesh.ndim != 2 or not torch.equal(full, reference):
            wrong.append(f"{name} {placements} mesh {param.device_mesh.mesh_dim_names}")
    dist.destroy_process_group()
    if wrong:
        print(f"rank differs from the full init: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
