"""A run directory that can be trusted: directories that cannot be written are refused before step 1
(naming the key), and two launches into one run directory are refused naming the holder, while a lock
left by a launch that is gone is taken over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.config import ConfigError
from pretrain.train.preflight import check_writable
from pretrain.train.run_lock import LOCK, STALE_AFTER_S, RunLock, this_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write to: chmod for a normal user, a read-only mount for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("root without permission to mount: no way to make a directory read-only")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_unwritable_directories_are_refused_naming_the_key(tmp_path, read_only_dir):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"run\.dir=.*a_file is a file, not a directory; point run\.dir at a dir"):
        check_writable(tmp_path / "a_file", "run.dir")
    with pytest.raises(ConfigError, match=r"checkpoint\.dir=.*a_file/ckpt cannot be written: Not a directory"):
        check_writable(tmp_path / "a_file" / "ckpt", "checkpoint.dir")  # a parent that cannot exist
    with pytest.raises(ConfigError, match=r"checkpoint\.dir=.*ro cannot be written: (Read-only|Permission)"):
        check_writable(read_only_dir, "checkpoint.dir")
    with pytest.raises(ConfigError, match=r"checkpoint\.dir=.*ro/new cannot be written"):
        check_writable(read_only_dir / "new", "checkpoint.dir")  # a missing directory that cannot be made
    check_writable(tmp_path / "new" / "nested", "run.dir")
    assert (tmp_path / "new" / "nested").is_dir() and list((tmp_path / "new" / "nested").iterdir()) == []


def test_trainer_refuses_an_unwritable_checkpoint_dir_before_building_anything(trainer_factory, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"checkpoint\.dir=.*a_file is a file"):
        trainer_factory(tmp_path / "run", f"checkpoint.dir={tmp_path / 'a_file'}")
    with pytest.raises(ConfigError, match=r"checkpoint\.dir \(default <run\.dir>/checkpoints\)=.*is a file"):
        (tmp_path / "run2").mkdir()
        (tmp_path / "run2" / "checkpoints").write_text("")
        trainer_factory(tmp_path / "run2")


HOLD = "import sys, time; from pathlib import Path; from pretrain.train.run_lock import RunLock; " \
       "RunLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"


def test_a_second_launch_is_refused_naming_the_holder(trainer_factory, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=rf"run\.dir={tmp_path} is in use by another launch \(host "
                           rf"{socket.gethostname()}, pid {holder.pid}, since .*; wait for it to end or use another "
                           rf"run\.dir"):
            trainer_factory(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    trainer = trainer_factory(tmp_path)  # the holder is gone (killed): its lock is stale, taken over
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    trainer.run_lock.release()
    assert not (tmp_path / LOCK).exists()


def write_lock(run_dir: Path, age_s: float = 0.0, **holder) -> None:
    (run_dir / LOCK).write_text(json.dumps({**this_process(), **holder}))
    then = time.time() - age_s
    os.utime(run_dir / LOCK, (then, then))


@pytest.mark.parametrize("holder, age_s, taken", [
    ({"host": "node-7", "pid": 1234}, 60.0, False),  # another host, refreshed a minute ago: alive
    ({"host": "node-7", "pid": 1234}, STALE_AFTER_S + 60, True),  # another host, silent too long: gone
    ({"host": "node-7", "pid": 1234, "job": "42"}, 60.0, True),  # the same Slurm job, requeued elsewhere
    ({"pid": 2 ** 22 + 1}, 0.0, True),  # this host, no such process
    ({"start": 1}, 0.0, True),  # this host, this pid, but another start time: a reused pid
])
def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path, monkeypatch, holder, age_s, taken):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    if "job" not in holder:
        holder["job"] = "41"
    write_lock(tmp_path, age_s, **holder)
    if not taken:
        with pytest.raises(ConfigError, match=r"in use by another launch \(host node-7, pid 1234, Slurm job 41"):
            RunLock.acquire(tmp_path)
        return
    lock = RunLock.acquire(tmp_path)
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_torn_lock_is_stale_only_once_it_is_old(tmp_path):
    (tmp_path / LOCK).write_text("")
    with pytest.raises(ConfigError, match="a launch that is writing it"):
        RunLock.acquire(tmp_path)
    os.utime(tmp_path / LOCK, (time.time() - 60, time.time() - 60))
    RunLock.acquire(tmp_path).release()
