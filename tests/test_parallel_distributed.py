"""Pipeline and context parallelism end to end under torchrun on CPU/gloo: each layout reproduces the
single-process losses (fp32, 10 steps, |Δloss| <= 1e-5, grad norms and eval losses too), resume under
pp and under cp is exact, and a pp=2 checkpoint resumes with pp=1 (DCP reshards the stages).

Every launch costs seconds of imports, so each run directory is made once (module fixtures) and read
by several tests; compositions ride along in the layouts (sequence parallel and activation
checkpointing with pp x tp; the interleaved schedule, FSDP2 over dp=2 and gradient accumulation over
two schedule runs in one layout). All runs:
glm-tiny with 4 layers (tied head, learned 2-D positions), seq_len 64, global batch 8 in micro-batches
of 2, 10 steps, checkpoints at 5 and 10, held-out loss at 5 and 10.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from tests.test_train_distributed import LOSS_ATOL, STEPS, losses, records, resume_from, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    from pretrain.data.corpus import prepare_embedded_corpus
    cache = tmp_path_factory.getbasetemp() / "train-corpus"  # shared with the other trainer tests
    prepare_embedded_corpus(cache)
    config = {
        "model": {"preset": "glm-tiny", "num_layers": 4},
        "objective": {"strategy": "glm-10b"},
        "data": {"corpus": "embedded", "cache_dir": str(cache), "num_workers": 0},
        "train": {"max_steps": STEPS, "global_batch_size": 8, "micro_batch_size": 2, "seq_len": 64, "lr": 3e-3,
                  "warmup_steps": 2, "lr_decay_steps": STEPS, "seed": 0},
        "checkpoint": {"interval": 5, "keep": 3},
        "eval": {"interval": 5, "batches": 2},
        "metrics": {"log_interval": 1},
    }
    path = tmp_path_factory.mktemp("config") / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(base_config, tmp_path_factory) -> Path:
    return train(base_config, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def pp2(base_config, tmp_path_factory) -> Path:
    """1F1B over 2 stages, 4 micro-batches per schedule run."""
    return train(base_config, tmp_path_factory.mktemp("pp2"), 2, "parallel.pp=2", "parallel.pp_schedule=1f1b")


@pytest.fixture(scope="module")
def cp2(base_config, tmp_path_factory) -> Path:
    return train(base_config, tmp_path_factory.mktemp("cp2"), 2, "parallel.cp=2")


LAYOUTS = {
    "pp2_tp2_sp_ac": (4, ["parallel.pp=2", "parallel.tp=2", "parallel.sequence_parallel=true",
                          "train.activation_checkpointing=true"]),
    # interleaved 1F1B, 2 virtual stages of one layer per rank, FSDP2 over 2 data-parallel ranks, and
    # 4 micro-batches per rank in two schedule runs of 2 (gradient accumulation across runs)
    "pp2_interleaved_dp2": (4, ["parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b",
                                "parallel.pp_virtual_stages=2", "parallel.pp_layers_per_stage=[1,1,1,1]",
                                "train.micro_batch_size=1", "parallel.pp_microbatches=2"]),
    "cp2_tp2": (4, ["parallel.cp=2", "parallel.tp=2"]),
}


def assert_same_run(expected_dir: Path, run_dir: Path, steps: list[int], exact: bool, layout: str) -> None:
    expected, got = {r["step"]: r for r in records(expected_dir)}, {r["step"]: r for r in records(run_dir)}
    assert sorted(got) == steps, layout
    for step in steps:
        for key in ("loss", "eval/loss", *(k for k in expected[step] if k.startswith("loss/"))):
            if key in expected[step]:
                if exact:
                    assert got[step][key] == expected[step][key], (layout, step, key)
                else:
                    assert got[step][key] == pytest.approx(expected[step][key], abs=LOSS_ATOL), (layout, step, key)
        assert got[step]["grad_norm"] == pytest.approx(expected[step]["grad_norm"], rel=0 if exact else 1e-4), \
            (layout, step)


@pytest.mark.parametrize("layout", ["pp2", "cp2", *LAYOUTS])
def test_layout_reproduces_single_process_losses(layout, reference, request, base_config, tmp_path):
    if layout in LAYOUTS:
        run_dir = train(base_config, tmp_path, LAYOUTS[layout][0], *LAYOUTS[layout][1])
    else:
        run_dir = request.getfixturevalue(layout)
    assert_same_run(reference, run_dir, list(range(1, STEPS + 1)), exact=False, layout=layout)


def test_pp_resume_is_exact(pp2, base_config, tmp_path):
    run_dir = train(base_config, resume_from(pp2, 5, tmp_path), 2, "parallel.pp=2", "parallel.pp_schedule=1f1b")
    assert_same_run(pp2, run_dir, [6, 7, 8, 9, 10], exact=True, layout="pp2 resumed")


def test_pp2_checkpoint_resumes_in_one_process(pp2, reference, base_config, tmp_path):
    """DCP reshards the stages (and the tied head's two copies, stored once) into one model."""
    run_dir = train(base_config, resume_from(pp2, 5, tmp_path))
    assert_same_run(reference, run_dir, [6, 7, 8, 9, 10], exact=False, layout="pp2 -> pp1")


def test_cp_resume_is_exact(cp2, base_config, tmp_path):
    run_dir = train(base_config, resume_from(cp2, 5, tmp_path), 2, "parallel.cp=2")
    assert_same_run(cp2, run_dir, [6, 7, 8, 9, 10], exact=True, layout="cp2 resumed")


def test_cp_runs_train_on_packed_rows_with_part_b_across_chunk_boundaries(base_config):
    """What makes the cp=2 equality meaningful: the batches pack several documents per row and their
    Part B crosses the boundaries between the 2·cp chunks (at S/4, S/2, 3S/4)."""
    from pretrain.data.loader import build_loader, glm_collator, open_data
    from pretrain.objectives import declared_special_tokens, raw_length
    from pretrain.train.config import load_config
    cfg = load_config(base_config, [])
    t = cfg.train
    source = open_data(cfg.data, declared_special_tokens(cfg.objective))
    collator = glm_collator(source, cfg.objective, seq_len=t.seq_len, seed=t.seed,
                            global_batch_size=t.global_batch_size)
    loader = build_loader(cfg.data, collator, seq_len=t.seq_len, raw_len=raw_length(cfg.objective, t.seq_len),
                          global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size, dp_rank=0,
                          dp_size=1, seed=t.seed, split="train", source=source)
    packed = crossing = 0
    for batch in itertools.islice(loader, STEPS * t.global_batch_size // t.micro_batch_size):
        segments, part_b = batch["segment_ids"], ~batch["part_a"] & (batch["segment_ids"] >= 0)
        packed += sum(len(set(row.tolist()) - {-1}) > 1 for row in segments)
        for cut in (t.seq_len // 4, t.seq_len // 2, 3 * t.seq_len // 4):
            crossing += int((part_b[:, cut - 1] & part_b[:, cut] & (segments[:, cut - 1] == segments[:, cut])).sum())
    assert packed >= 5 and crossing >= 20, (packed, crossing)
