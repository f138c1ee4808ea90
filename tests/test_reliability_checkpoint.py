"""Checkpoints that cannot hurt: nothing unpickled from a run directory, a bad latest checkpoint named
(or skipped, opt-in), no save inside a NaN streak, background saves marked complete only once written,
a vocabulary change named as such, a full disk reported in one line, kill -9 mid-save harmless, and
exact resume with dropout on. A real Trainer on a one-process gloo group (conftest.trainer_factory)."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pretrain.config import ConfigError
from pretrain.parallel import safe_dcp
from pretrain.train import checkpoint
from pretrain.train.checkpoint import CheckpointWriteError, CorruptCheckpointError, step_dir
from pretrain.train.metrics import read_jsonl
from pretrain.train.preemption import StopSignals

ROOT = Path(__file__).resolve().parents[1]


class RunsCommand:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def reseal(path: Path) -> None:
    """Record the current file sizes in ``complete``, as a forger (or a careless edit) would."""
    files = {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*")
             if p.is_file() and p.name != "complete"}
    (path / checkpoint.COMPLETE).write_text(json.dumps({"step": checkpoint.step_of(path), "files": files}))


def edit_trainer_state(path: Path, edit) -> None:
    state = json.loads((path / checkpoint.TRAINER_STATE).read_text())
    edit(state)
    (path / checkpoint.TRAINER_STATE).write_text(json.dumps(state))
    reseal(path)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")}


@pytest.fixture
def three_checkpoints(trainer_factory, tmp_path) -> Path:
    """A run directory holding complete checkpoints of steps 1, 2 and 3."""
    run = tmp_path / "run"
    trainer = trainer_factory(run, "checkpoint.interval=1", "checkpoint.keep=3", "train.max_steps=3")
    trainer.train()
    return run


# --- nothing is unpickled -------------------------------------------------------------------------
def test_crafted_pickles_in_a_checkpoint_do_not_run(three_checkpoints, trainer_factory, tmp_path):
    marker = tmp_path / "pwned"
    latest = three_checkpoints / "checkpoints" / "step_00000003"
    (latest / safe_dcp.METADATA).write_bytes(pickle.dumps(RunsCommand(marker)))
    reseal(latest)
    with pytest.raises(CorruptCheckpointError,
                       match=r"refusing posix\.system.*last good checkpoint is .*step_00000002"):
        trainer_factory(three_checkpoints)
    older = three_checkpoints / "checkpoints" / "step_00000002"  # a checkpoint of the format before trainer.json
    (older / checkpoint.TRAINER_STATE).unlink()
    torch.save(RunsCommand(marker), older / checkpoint.LEGACY_TRAINER_STATE)
    reseal(older)
    with pytest.raises(CorruptCheckpointError, match=r"older version \(trainer\.pt, a pickle, which is not read"):
        trainer_factory(three_checkpoints, "checkpoint.resume_from=2")
    assert not marker.exists()


def test_dcp_bytes_are_read_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save(RunsCommand(marker), payload)
    payload.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        safe_dcp.SafeLoadPlanner().load_bytes(None, payload)
    assert not marker.exists()


# --- a bad latest checkpoint ----------------------------------------------------------------------
def test_truncated_latest_names_itself_and_the_last_good_one(three_checkpoints, trainer_factory):
    latest = three_checkpoints / "checkpoints" / "step_00000003"
    shard = latest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=r"cannot resume from .*step_00000003: .*__0_0\.distcp has 1000 "
                       r"bytes, \d+ when it was saved: truncated.*last good checkpoint is .*step_00000002: resume "
                       r"from it with checkpoint\.resume_from=2"):
        trainer_factory(three_checkpoints)
    trainer = trainer_factory(three_checkpoints, "checkpoint.fallback_to_previous=true")
    assert trainer.step == 2
    checkpoints = three_checkpoints / "checkpoints"
    assert [p.name for p in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000001", "step_00000002"]
    assert (checkpoints / checkpoint.ABANDONED / "step_00000003" / "__0_0.distcp").is_file()  # kept, out of the way


def test_resume_from_a_step_or_from_scratch(three_checkpoints, trainer_factory):
    checkpoints = three_checkpoints / "checkpoints"
    with pytest.raises(ConfigError,
                       match=r"resume_from=7: .* has no complete checkpoint of step 7 \(it has \[1, 2, 3\]\)"):
        trainer_factory(three_checkpoints, "checkpoint.resume_from=7")
    assert trainer_factory(three_checkpoints, "checkpoint.resume_from=2").step == 2
    assert [p.name for p in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000001", "step_00000002"]
    assert trainer_factory(three_checkpoints, "checkpoint.resume_from=none").step == 0
    assert checkpoint.complete_checkpoints(checkpoints) == []
    assert sorted(p.name for p in (checkpoints / checkpoint.ABANDONED).iterdir()) == [
        "step_00000001", "step_00000002", "step_00000003"]


def test_no_checkpoint_inside_a_nonfinite_streak(trainer_factory, tmp_path, monkeypatch):
    from pretrain.train import loop
    trainer = trainer_factory(tmp_path)
    batches = iter(trainer.s.loader)
    finite = loop.CrossEntropyHead

    def nan_loss(*args):  # a NaN in the head's input: loss, CE and gradients all NaN
        head = finite(*args)
        return lambda hidden, weight: head(hidden * float("nan"), weight)
    for step, poisoned in ((1, False), (2, True), (3, False)):
        monkeypatch.setattr(loop, "CrossEntropyHead", nan_loss if poisoned else finite)
        trainer.train_step(batches)
        trainer.save(wait=True)
    saved = [checkpoint.step_of(p) for p in checkpoint.complete_checkpoints(tmp_path / "checkpoints")]
    assert saved == [1, 3]
    edit_trainer_state(step_dir(tmp_path / "checkpoints", 3), lambda s: s.update(consecutive_nonfinite=2))
    with pytest.raises(CorruptCheckpointError, match="saved inside a streak of 2 non-finite steps.*resume_from=1"):
        trainer_factory(tmp_path)


# --- writes ---------------------------------------------------------------------------------------
def test_background_save_is_complete_only_once_written_and_the_next_save_waits(trainer_factory, tmp_path):
    trainer = trainer_factory(tmp_path)
    batches, signals = iter(trainer.s.loader), StopSignals()
    gate, real_save = Future(), trainer.engine.save

    def gated_save(path, group):
        real_save(path, group).result()  # the files are written; the write "finishes" when the gate opens
        return gate

    trainer.engine.save = gated_save
    trainer.train_step(batches)
    trainer.save()
    root = tmp_path / "checkpoints"
    assert trainer.checkpointer.writing() and not step_dir(root, 1).exists()
    assert (root / ".step_00000001.partial" / "__0_0.distcp").is_file()
    trainer._step_boundary(signals)  # a rank still writing: nothing is marked complete
    assert not step_dir(root, 1).exists()
    threading.Timer(0.2, gate.set_result, (None,)).start()
    trainer.engine.save = real_save
    trainer.train_step(batches)
    trainer.save(wait=True)  # waits for step 1's write, marks it complete, then writes step 2
    assert [checkpoint.step_of(p) for p in checkpoint.complete_checkpoints(root)] == [1, 2]
    assert checkpoint.verify(step_dir(root, 1))["step"] == 1


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs (root with mount rights only): a disk that fills up."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_disk_full_at_save_is_one_line_and_leaves_nothing_behind(trainer_factory, tmp_path, tiny_filesystem):
    trainer = trainer_factory(tmp_path / "run", f"checkpoint.dir={tiny_filesystem}")
    trainer.train_step(iter(trainer.s.loader))
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint step_00000001 in .*tiny \(0\.\d MiB "
                       r"free there\): .*there is no earlier checkpoint. Free space"):
        trainer.save(wait=True)
    assert list(tiny_filesystem.iterdir()) == []


KILLED_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch.distributed as dist
    from pretrain.train.checkpoint import Checkpointer

    class Engine:  # writes half of its shard, then the process is killed
        def __init__(self, die):
            self.die = die
        def save(self, path, group):
            with open(path / "shard.bin", "wb") as out:
                out.write(b"x" * 1000)
                out.flush()
                if self.die:
                    os.kill(os.getpid(), signal.SIGKILL)
                out.write(b"x" * 1000)

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{sys.argv[2]}")
    root = Path(sys.argv[1])
    state = {"loader": {}, "topology": {}}
    Checkpointer(root, Engine(die=False), keep=3, asynchronous=False).save(1, {"step": 1, **state}, wait=True)
    Checkpointer(root, Engine(die=True), keep=3, asynchronous=False).save(2, {"step": 2, **state}, wait=True)
""")


def test_kill_9_mid_save_leaves_the_previous_checkpoint(tmp_path, single_process_env):
    script = tmp_path / "save.py"
    script.write_text(KILLED_MID_SAVE)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), os.environ["MASTER_PORT"]],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    root = tmp_path / "ckpt"
    assert sorted(p.name for p in root.iterdir()) == [".step_00000002.partial", "step_00000001"]
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        restored = []
        chosen = checkpoint.resume(root, "latest", False, lambda path, state: restored.append(state))
    finally:
        dist.destroy_process_group()
    assert chosen == root / "step_00000001" and restored == [{"step": 1, "loader": {}, "topology": {}}]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]


# --- what a resume refuses, and what it restores exactly --------------------------------------------
def test_vocabulary_change_on_resume_says_tokenizer_data_changed(three_checkpoints, trainer_factory):
    changed = "data.special_tokens={cls: '<s>'}"  # a tokenizer without <s>: it is appended, the vocabulary grows
    with pytest.raises(ConfigError, match=r"vocabulary of 2048 .*this run has 2176 .*the tokenizer/data changed"):
        trainer_factory(three_checkpoints, changed)
    # a checkpoint without the recorded vocabulary: the embedding's shape names it before DCP would
    edit_trainer_state(three_checkpoints / "checkpoints" / "step_00000003", lambda s: s.pop("vocabulary"))
    with pytest.raises(ConfigError, match=r"model.embed_tokens.weight of shape \[2048, 64\], this model \[2176, 64\]: "
                       r"the tokenizer/data changed"):
        trainer_factory(three_checkpoints, changed)
    with pytest.raises(ConfigError, match=r"model.layers.0.mlp.up_proj.weight of shape \[256, 64\], this model "
                       r"\[128, 64\]: the model config changed"):
        trainer_factory(three_checkpoints, "model.ffn_hidden_size=128")


def test_resume_with_dropout_is_exact(trainer_factory, tmp_path):
    """The loader draws nothing from the global RNG (its own generator) and the RNG state is restored,
    so dropout masks after a resume are those of the uninterrupted run; eval every step iterates a
    second loader in between."""
    options = ("model.dropout=0.1", "train.max_steps=4", "checkpoint.interval=2", "eval.interval=1", "eval.batches=1")
    trainer_factory(tmp_path / "straight", *options).train()
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step_00000002",
                    tmp_path / "resumed" / "checkpoints" / "step_00000002")
    resumed = trainer_factory(tmp_path / "resumed", *options)
    assert resumed.step == 2
    resumed.train()
    straight, got = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(got) == [3, 4] and all(got[s] == straight[s] for s in got), (got, straight)


def test_sigusr1_mid_run_saves_the_step_and_returns(trainer_factory, tmp_path):
    """Slurm's time-limit signal (launch/slurm.sbatch: --signal=B:USR1, forwarded by torchrun): the
    step in progress finishes, is saved, and train() returns before max_steps."""
    trainer = trainer_factory(tmp_path, "train.max_steps=50")
    real_step = trainer.train_step

    def step_then_signal(batches):
        record = real_step(batches)
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return record

    trainer.train_step = step_then_signal
    assert trainer.train() == 2
    assert [checkpoint.step_of(p) for p in checkpoint.complete_checkpoints(tmp_path / "checkpoints")] == [2]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the trainer's handler is gone with the run
