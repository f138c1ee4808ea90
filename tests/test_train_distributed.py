"""The trainer end to end under torchrun on CPU/gloo: parallel layouts reproduce the single-process
losses, resume is exact (after a clean stop, a kill -9, across TP sizes), SIGTERM saves and exits,
metrics.jsonl and TensorBoard hold the scalars.

Every launch costs seconds of imports, so each run directory is made once (module fixtures) and read
by several tests. All runs: glm-tiny, seq_len 64, global batch 8, 10 steps, fp32.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import yaml

from pretrain.cli.ablate import train_command

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
# fp32 on CPU: TP/DP change only the summation order (all-reduce, sharded matmuls), so ten steps of
# AdamW agree to ~5e-7 here; 1e-5 absolute (1.5e-6 relative at loss ~7) is tight enough to catch a
# wrong normalisation or a missing gradient reduction (those move the loss by >1e-3 within 2 steps).
LOSS_ATOL = 1e-5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    from pretrain.data.corpus import prepare_embedded_corpus
    cache = tmp_path_factory.getbasetemp() / "train-corpus"  # shared with test_train_units.py
    prepare_embedded_corpus(cache)  # once, before the launches race for it
    config = {
        "model": {"preset": "glm-tiny"},
        "objective": {"strategy": "glm-10b"},
        "data": {"corpus": "embedded", "cache_dir": str(cache), "num_workers": 0},
        "train": {"max_steps": STEPS, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 64, "lr": 3e-3,
                  "warmup_steps": 2, "lr_decay_steps": STEPS, "seed": 0},
        "checkpoint": {"interval": 5, "keep": 3},
        # downstream metrics too (one held-out document per language): the same numbers under every layout
        "eval": {"interval": 5, "batches": 2, "downstream": True, "downstream_documents": 1},
        "metrics": {"log_interval": 1},
    }
    path = tmp_path_factory.mktemp("config") / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, run_dir: Path, nproc: int, overrides: list[str]) -> list[str]:
    return train_command(config, [f"run.dir={run_dir}", *overrides], nproc)


def train(config: Path, run_dir: Path, nproc: int = 1, *overrides: str) -> Path:
    launch(command(config, run_dir, nproc, list(overrides)), run_dir)
    return run_dir


def launch(command: list[str], run_dir: Path, timeout: int = 240) -> None:
    """Run a training launch in ``run_dir`` (which may hold a checkpoint to resume). One in which a worker
    died of a native crash (SIGABRT, SIGSEGV: torch/gloo below our code; its Python stacks are in the
    report) is made once more from what ``run_dir`` held before, and the crash reported as a warning; a
    Python error or a second crash fails the test."""
    before = run_dir.with_name(run_dir.name + ".before-launch")
    if run_dir.exists():
        shutil.copytree(run_dir, before)
    for attempt in range(2):
        if attempt:
            shutil.rmtree(run_dir)
            if before.exists():
                shutil.copytree(before, run_dir)
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0:
            return
        if attempt or not native_crash(result.stderr):
            break
        warnings.warn(f"a worker crashed natively, launching again: {crash_report(result)}")
    raise AssertionError(crash_report(result))


def native_crash(stderr: str) -> bool:
    """torchrun's summary names the first failing worker's exit; a negative one is the signal it died of."""
    root_cause = re.search(r"Root Cause.*?exitcode\s*:\s*-(\d+)", stderr, re.S)
    return root_cause is not None and int(root_cause.group(1)) in NATIVE_CRASH_SIGNALS


NATIVE_CRASH_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


def crash_report(result: subprocess.CompletedProcess) -> str:
    """The output's tails, and the crashed worker's Python stacks (``faulthandler``), which the other
    workers' connection errors would otherwise push out of the tail."""
    fatal = result.stderr.find("Fatal Python error")
    stacks = result.stderr[fatal:fatal + 4000] + "\n...\n" if fatal >= 0 else ""
    return stacks + result.stdout[-3000:] + result.stderr[-5000:]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir)}


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def resume_from(source: Path, step: int, run_dir: Path) -> Path:
    """A fresh run directory holding only ``source``'s checkpoint of ``step``."""
    name = f"step_{step:08d}"
    shutil.copytree(source / "checkpoints" / name, run_dir / "checkpoints" / name)
    return run_dir


@pytest.fixture(scope="module")
def reference(base_config, tmp_path_factory) -> Path:
    return train(base_config, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def tp2(base_config, tmp_path_factory) -> Path:
    return train(base_config, tmp_path_factory.mktemp("tp2"), 2, "parallel.tp=2")


LAYOUTS = {
    # one micro-batch per rank instead of two accumulated; ZeRO-2-like FSDP rides along
    "dp2": (2, ["parallel.tp=1", "parallel.fsdp=grad_op"]),
    # 4 processes; sequence parallel and activation checkpointing ride along (same numbers expected)
    "tp2xdp2_sp_ac": (4, ["parallel.tp=2", "train.micro_batch_size=2", "parallel.sequence_parallel=true",
                          "train.activation_checkpointing=true"]),
    # two micro-batches per rank, each reduce-scattered into the sharded gradients
    "dp2_reduce_every_microbatch": (2, ["parallel.tp=1", "train.micro_batch_size=2",
                                        "parallel.reduce_every_microbatch=true"]),
    # DeepSpeed: ZeRO-2 over 2 data-parallel ranks; AutoTP over 2 ranks with ZeRO-1
    "deepspeed_dp2_zero2": (2, ["parallel.engine=deepspeed", "parallel.tp=1", "parallel.zero_stage=2"]),
}


@pytest.fixture(scope="module")
def deepspeed_tp2(base_config, tmp_path_factory) -> Path:
    return train(base_config, tmp_path_factory.mktemp("ds_tp2"), 2, "parallel.engine=deepspeed", "parallel.tp=2",
                 "parallel.zero_stage=1")


@pytest.mark.parametrize("layout", ["tp2", "deepspeed_tp2", *LAYOUTS])
def test_parallel_layout_reproduces_single_process_losses(layout, reference, request, base_config, tmp_path):
    if layout in LAYOUTS:
        run_dir = train(base_config, tmp_path, LAYOUTS[layout][0], *LAYOUTS[layout][1])
    else:
        run_dir = request.getfixturevalue(layout)
    expected, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=LOSS_ATOL), (layout, step)
    by_step = {r["step"]: r for r in records(run_dir)}
    for r in records(reference):
        assert by_step[r["step"]]["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-4), (layout, r["step"])
        # per-source losses are reduced over the dp group like the loss (tp ranks hold the same rows)
        per_source = {k: v for k, v in r.items() if "source_loss/" in k}
        assert per_source and {k: by_step[r["step"]].get(k) for k in per_source} == pytest.approx(per_source, abs=1e-4)
        if "eval/loss" in r:  # the same held-out samples whatever the layout
            assert by_step[r["step"]]["eval/loss"] == pytest.approx(r["eval/loss"], abs=LOSS_ATOL), layout
            evals = {key for key in r if key.startswith("eval/")}
            assert {"eval/cloze_acc", "eval/cloze_causal_ppl/de", "eval/infill_acc/zh"} <= evals
            assert {key for key in by_step[r["step"]] if key.startswith("eval/")} == evals, layout
            for key in evals:  # accuracies: an argmax may flip on a ~1e-6 logit difference, among ~1000 tokens
                tolerance = dict(abs=0.02) if "_acc" in key else dict(rel=1e-4)
                assert by_step[r["step"]][key] == pytest.approx(r[key], **tolerance), (layout, key)


# GLM-4 architecture on glm-tiny's sizes: untied head, GQA (2 KV heads: one per TP rank), partial
# RoPE, RMSNorm, SwiGLU (gate_proj), no MLP biases.
GLM4_LIKE = ["model.tie_embeddings=false", "model.num_kv_heads=2", "model.position_encoding=rope_1d",
             "model.partial_rotary_factor=0.5", "model.rope_interleaved=true", "model.norm=rmsnorm",
             "model.mlp=swiglu", "model.bias=false"]


def test_tp_reproduces_single_process_for_untied_gqa_rope_model(base_config, tmp_path):
    single = train(base_config, tmp_path / "single", 1, "eval.interval=0", "checkpoint.interval=0", *GLM4_LIKE)
    tp = train(base_config, tmp_path / "tp2", 2, "parallel.tp=2", "parallel.sequence_parallel=true",
               "eval.interval=0", "checkpoint.interval=0", *GLM4_LIKE)
    expected, got = losses(single), losses(tp)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=LOSS_ATOL), step


def test_resume_after_stop_is_exact(reference, base_config, tmp_path):
    """10 steps straight == 5 steps, stop (the process ends), resume in a new process, 5 steps."""
    run_dir = train(base_config, resume_from(reference, 5, tmp_path))
    expected, got = losses(reference), losses(run_dir)
    assert sorted(got) == [6, 7, 8, 9, 10]
    assert all(got[s] == expected[s] for s in got), (got, expected)


def test_deepspeed_resume_is_exact(deepspeed_tp2, base_config, tmp_path):
    run_dir = train(base_config, resume_from(deepspeed_tp2, 5, tmp_path), 2, "parallel.engine=deepspeed",
                    "parallel.tp=2", "parallel.zero_stage=1")
    expected, got = losses(deepspeed_tp2), losses(run_dir)
    assert sorted(got) == [6, 7, 8, 9, 10]
    assert all(got[s] == expected[s] for s in got), (got, expected)


def test_resume_across_tp_sizes(tp2, reference, base_config, tmp_path):
    """Saved with TP=2, resumed with TP=1: DCP reshards model and optimizer state."""
    got, expected = losses(train(base_config, resume_from(tp2, 5, tmp_path))), losses(reference)
    assert sorted(got) == [6, 7, 8, 9, 10]
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=LOSS_ATOL)


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if metrics.is_file() and any(json.loads(l)["step"] >= step for l in metrics.read_text().splitlines()
                                     if l.endswith("}")):
            return
        time.sleep(0.01)
    raise AssertionError(f"{run_dir} did not reach step {step} in {timeout}s")


def test_kill_9_resumes_from_last_complete_checkpoint(reference, base_config, tmp_path):
    # A long run (same schedule: lr_decay_steps fixes it) checkpointing every 3 steps, killed without
    # warning once step 4 is logged and checkpoint 3 is complete (a background save is marked complete
    # at a later step boundary), maybe inside a later save.
    args = command(base_config, tmp_path, 1, ["train.max_steps=1000", "checkpoint.interval=3", "eval.interval=0"])
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(tmp_path, 4, process)
        while not list((tmp_path / "checkpoints").glob("step_*/complete")):
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    complete = [p for p in (tmp_path / "checkpoints").glob("step_*") if (p / "complete").is_file()]
    last = max(int(p.name[5:]) for p in complete)
    assert 3 <= last < STEPS, "killed too late to test anything; the kill must land before step 10"
    train(base_config, tmp_path, 1, "checkpoint.interval=3", "eval.interval=0")
    expected, got = losses(reference), losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))  # re-run steps replace the killed run's lines
    assert all(got[s] == expected[s] for s in got), (got, expected)
    assert not list((tmp_path / "checkpoints").glob(".*partial"))


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), i.e. torchrun's worker processes."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return sorted(children)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(base_config, tmp_path):
    """Preemption: SIGTERM reaches one worker; all ranks stop after the same step, save it, exit 0.
    (Signalling torchrun itself makes torchrun exit 1 by design, whatever the workers do.)"""
    args = command(base_config, tmp_path, 2, ["parallel.tp=1", "train.max_steps=1000", "checkpoint.interval=0",
                                              "eval.interval=0", "data.num_workers=2"])
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(tmp_path, 2, process)
        workers = child_pids(process.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-4000:]
    last_logged = max(losses(tmp_path))
    assert last_logged < 1000
    assert checkpoints(tmp_path) == [f"step_{last_logged:08d}"]
    assert (tmp_path / "checkpoints" / f"step_{last_logged:08d}" / "complete").is_file()


def test_metrics_jsonl_and_checkpoints_of_a_run(reference):
    rows = records(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "tflops", "mfu", "max_memory_gib",
                "nonfinite_skipped"} <= set(row)
        assert row["mfu"] is None  # CPU: no peak known and none configured
        assert row["tokens_per_s"] > 0 and row["tflops"] > 0 and row["nonfinite_skipped"] == 0
        strategy_losses = {k: v for k, v in row.items() if k.startswith("loss/")}
        assert strategy_losses and set(strategy_losses) <= {"loss/token", "loss/sentence", "loss/document"}
        assert row["tokens_seen"] > 0 and any(k.startswith("source_loss/") for k in row)
    assert len({k for r in rows for k in r if k.startswith("loss/")}) >= 2  # one strategy per global batch
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert rows[0]["lr"] == pytest.approx(1.5e-3) and rows[1]["lr"] == pytest.approx(3e-3)  # warmup 2 steps
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [5, 10] and evals[1]["eval/loss"] < evals[0]["eval/loss"]
    assert checkpoints(reference) == ["step_00000005", "step_00000010"]
    resolved = yaml.safe_load((reference / "config.yaml").read_text())
    assert resolved["model"] == {"preset": "glm-tiny"} and resolved["resolved_model"]["vocab_size"] == 2048


def test_tensorboard_events_hold_the_scalars(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(reference / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tflops", "max_memory_gib", "eval/loss",
            "loss/token"} <= tags
    assert [e.step for e in events.Scalars("loss")] == list(range(1, STEPS + 1))
    jsonl = losses(reference)
    assert all(e.value == pytest.approx(jsonl[e.step], rel=1e-6) for e in events.Scalars("loss"))


def descendants(pid: int) -> list[int]:
    children = child_pids(pid)
    return children + [d for child in children for d in descendants(child)]


def rank_pid(torchrun: int, rank: int) -> int:
    for pid in child_pids(torchrun):
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return pid
    raise AssertionError(f"no rank {rank} under torchrun {torchrun}")


def latest_step(run_dir: Path) -> int:
    return max(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*") if (p / "complete").is_file())


PREEMPTED = ["parallel.tp=2", "data.num_workers=2", "train.max_steps=1000"]  # the tp2 run, interrupted


def interrupt(config: Path, run_dir: Path, after_step: int, fault) -> tuple[int, str]:
    """Launch the tp2 run under torchrun, let it pass ``after_step``, apply ``fault(torchrun_pid)``;
    returns torchrun's exit code and the output."""
    args = command(config, run_dir, 2, PREEMPTED)
    # its own session, as a job on a node: the job's process groups are not the test's
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        wait_for_step(run_dir, after_step + 1, process)
        fault(process.pid)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output


def test_preemption_through_torchrun_saves_and_resumes_exactly(tp2, base_config, tmp_path):
    """What clusters do, with 2 DataLoader workers per rank, each followed by a relaunch: SIGTERM to
    torchrun (it forwards it to each rank's process group, workers included), SIGTERM to every process
    group of the job at once (Slurm signalling a job step), kill -9 of rank 0. The signals save the step
    they stop at; the losses of the whole run equal the uninterrupted run's."""
    steps = [0]

    def stopped_cleanly(code: int, output: str, signal_name: str) -> None:
        assert code == 1, output[-3000:]  # torchrun's own exit code after a signal, by design
        assert output.count(f"stop signal ({signal_name}") == 2, output[-3000:]  # both ranks, saved, exit 0
        assert latest_step(tmp_path) > steps[-1]
        steps.append(latest_step(tmp_path))

    stopped_cleanly(*interrupt(base_config, tmp_path, steps[-1], lambda pid: os.kill(pid, signal.SIGTERM)), "SIGTERM")

    def every_group(pid: int) -> None:
        for group in {os.getpgid(p) for p in [pid, *descendants(pid)]}:
            os.killpg(group, signal.SIGTERM)
    stopped_cleanly(*interrupt(base_config, tmp_path, steps[-1], every_group), "SIGTERM")
    code, output = interrupt(base_config, tmp_path, steps[-1], lambda pid: os.kill(rank_pid(pid, 0), signal.SIGKILL))
    assert code != 0 and latest_step(tmp_path) >= steps[-1], output[-3000:]
    assert steps[-1] < STEPS - 1, f"the interruptions came too late to leave steps to resume: {steps}"
    train(base_config, tmp_path, 2, "parallel.tp=2", "data.num_workers=2")  # past rank 0's stale run.lock too
    expected, got = losses(tp2), losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert all(got[s] == expected[s] for s in got), (steps, got, expected)
