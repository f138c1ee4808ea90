"""Watching a run: the progress line (tokens seen, throughput, ETA), per-source (language) train and eval
losses, Weights & Biases beside TensorBoard (offline), the GPU peak table."""
from __future__ import annotations

import itertools
import sys

import pytest
import torch

from pretrain.config import ConfigError
from pretrain.train import metrics
from pretrain.train.metrics import ETA, console_line, duration, peak_tflops_of, si


def test_console_line_shows_progress_tokens_and_eta():
    record = {"step": 120, "loss": 2.5, "loss/token": 2.25, "source_loss/en": 2.0, "tokens_per_s": 45_600.0,
              "tokens_seen": 1_234_567, "eta_s": 3725.0, "mfu": None}
    assert console_line(record, 1000) == ("step 120/1000 12% | loss 2.5000 (token 2.250) | 45.6k tok/s | "
                                          "1.23M tok | eta 1h02m")
    assert [si(x) for x in (999, 1000, 4.5e9, 2.1e12)] == ["999", "1k", "4.5B", "2.1T"]
    assert [duration(x) for x in (7.2, 95, 3725)] == ["7s", "1m35s", "1h02m"]


def test_eta_follows_the_pace_after_the_first_step(monkeypatch):
    clock = iter([100.0, 130.0, 150.0])  # step 1 ends at 100 s (compile), then 30 s and 20 s per step
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    eta = ETA(max_steps=11)
    assert eta(1) is None  # no pace yet
    assert eta(2) == pytest.approx(30.0 * 9)
    assert eta(3) == pytest.approx(25.0 * 8)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 NVL", 835.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA GeForce RTX 4090", None)])
def test_peak_table_reads_the_most_specific_name(name, peak):
    assert peak_tflops_of(name) == peak


def recording(batches, seen: list):
    for batch in batches:
        seen.append({k: v.clone() for k, v in batch.items()})
        yield batch


def test_per_source_losses_add_up_to_the_loss(trainer_factory, tmp_path):  # noqa: F811
    trainer = trainer_factory(tmp_path, "eval.interval=1", "eval.batches=2", "data.eval_documents=2")
    loader, seen = trainer.s.loader, []
    record = trainer.train_step(recording(iter(loader), seen))
    # source_ids name each row's language: the one its global sample id was drawn from
    for batch in seen:
        expected = [loader.dataset.index.locate(int(i))[0] for i in batch["sample_ids"]]
        assert batch["source_ids"].tolist() == expected
    # every Part-B token belongs to one source: the token-weighted mean of the source losses is the loss
    counts = torch.zeros(len(loader.languages), dtype=torch.float64)
    for batch in seen:
        counts.index_add_(0, batch["source_ids"], batch["loss_mask"].sum(1).double())
    per_source = {k.removeprefix("source_loss/"): v for k, v in record.items() if k.startswith("source_loss/")}
    assert set(per_source) == {loader.languages[i] for i in counts.nonzero().flatten().tolist()}
    weighted = sum(per_source[lang] * counts[loader.languages.index(lang)] for lang in per_source) / counts.sum()
    assert float(weighted) == pytest.approx(record["loss"], rel=1e-6)
    assert record["tokens_seen"] == sum(int((b["segment_ids"] >= 0).sum()) for b in seen)

    evaluated = trainer.evaluate()
    eval_sources = {k: v for k, v in evaluated.items() if k.startswith("eval/source_loss/")}
    assert {k.rsplit("/", 1)[1] for k in eval_sources} <= set(loader.languages) and len(eval_sources) >= 2
    assert min(eval_sources.values()) <= evaluated["eval/loss"] <= max(eval_sources.values())


def test_a_run_prints_progress_and_logs_to_wandb_offline(trainer_factory, tmp_path, monkeypatch, capsys):  # noqa: F811
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = trainer_factory(tmp_path, "train.max_steps=3", "metrics.log_interval=1", "metrics.wandb.enabled=true",
                              "metrics.wandb.mode=offline", "metrics.wandb.project=glm-test")
    assert trainer.train() == 3
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 3 and all(" tok/s | " in line and " tok" in line for line in lines)
    assert "eta" not in lines[0] and "eta" in lines[1]  # the ETA needs one step of pace
    wandb.teardown()  # the W&B service writes the run file behind the run; stop it so the file is complete
    run_id = (tmp_path / "wandb" / "run_id").read_text()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    logged = (runs[0] / f"run-{run_id}.wandb").read_bytes()  # protobuf records: the keys are plain text
    assert all(key.encode() in logged for key in ("loss", "grad_norm", "tokens_seen", "source_loss/", "train"))


def test_wandb_without_the_package_is_refused_with_a_fix(trainer_factory, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match=r"metrics.wandb.enabled=true needs the wandb package: pip install wandb"):
        trainer_factory(tmp_path, "metrics.wandb.enabled=true")


def test_rotary_tables_follow_autocast_so_q_k_v_share_a_dtype():
    from pretrain.model import build_model
    from pretrain.model.attention import build_attention
    model = build_model("glm-tiny", position_encoding="rope_1d", partial_rotary_factor=0.5, num_kv_heads=2)
    seen = []

    def spying(backend, segment_ids, part_a, dropout_p=0.0):
        attend = build_attention(backend, segment_ids, part_a, dropout_p)
        return lambda q, k, v: seen.append((q.dtype, k.dtype, v.dtype)) or attend(q, k, v)

    model.build_attention = spying
    ids = torch.randint(0, 100, (2, 16))
    positions = torch.arange(16).expand(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, positions, torch.zeros_like(ids), torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool))
    assert seen and all(dtypes == (torch.bfloat16,) * 3 for dtypes in seen), seen


def test_cuda_process_group_is_bound_to_its_device(monkeypatch):
    """init_process_group(device_id=...) on CUDA (eager NCCL init on the right GPU); checked by the call
    it makes, since no GPU is here."""
    from pretrain.parallel import mesh
    calls = {}
    monkeypatch.setattr(mesh.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(mesh.dist, "init_process_group", lambda backend, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(mesh.torch.cuda, "set_device", lambda device: calls.update(set_device=device))
    for key, value in dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4").items():
        monkeypatch.setenv(key, value)
    mesh.init_distributed("cuda")
    assert calls["backend"] == "nccl" and calls["device_id"] == calls["set_device"] == torch.device("cuda", 1)


def test_optimizer_uses_foreach_off_cuda():
    from pretrain.model import build_model
    from pretrain.train.config import TrainConfig
    from pretrain.train.optim import build_optimizer
    optimizer = build_optimizer(build_model("glm-tiny"), TrainConfig())
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]


def test_tokenizer_training_can_show_progress():
    from pretrain.data.tokenizer import train_tokenizer
    lines = [f"line {i} of some text" for i in range(200)]
    quiet, shown = train_tokenizer(lines, 300), train_tokenizer(itertools.islice(lines, None), 300, progress=True)
    assert quiet.get_vocab() == shown.get_vocab()
