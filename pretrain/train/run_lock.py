"""One launch per run directory: ``<run.dir>/run.lock`` names its holder (host, pid, job), refreshed
every 30 s while the run lives, removed when it ends.

A second launch is refused with the holder's name. A lock left by a launch that is gone is taken
over: on the same host when the holder's process no longer exists (pid and start time, so a reused
pid does not count), from the same Slurm job (a requeue lands on another node), or from another host
when the lock has not been refreshed for ``STALE_AFTER_S``. Created with O_EXCL and taken over by
rename, so two launches racing for it cannot both win.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from pretrain.config import ConfigError

logger = logging.getLogger(__name__)

LOCK = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # a holder on another host that has not refreshed the lock this long is gone
_TORN_GRACE_S = 5.0  # an empty lock younger than this is being written by its holder right now


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "job": os.environ.get("SLURM_JOB_ID"), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"host", "pid"} <= set(holder) else None


def stale_reason(holder: dict | None, age_s: float, me: dict) -> str | None:
    """Why the lock's holder is gone, or None while it may still be running."""
    if holder is None:
        return "it is unreadable (torn by a crash)" if age_s > _TORN_GRACE_S else None
    if (holder["host"], holder["pid"], holder.get("start")) == (me["host"], me["pid"], me["start"]):
        return "this process holds it"
    if me["job"] and holder.get("job") == me["job"]:
        return f"it was taken by this Slurm job ({me['job']}) before a requeue or restart"
    if holder["host"] == me["host"]:
        start = _start_time(int(holder["pid"]))
        if start is None or (holder.get("start") is not None and start != holder["start"]):
            return f"its holder, pid {holder['pid']}, is gone"
        return None
    if age_s > STALE_AFTER_S:
        return f"its holder on {holder['host']} has not refreshed it for {age_s:.0f} s"
    return None


class RunLock:
    def __init__(self, path: Path, me: dict):
        self.path, self.me = path, me
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._refresh, name="run-lock-heartbeat", daemon=True)

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        path, me = run_dir / LOCK, this_process()
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                cls._take_over(path, me)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
                handle.flush()
                os.fsync(handle.fileno())
            lock = cls(path, me)
            lock._heartbeat.start()
            atexit.register(lock.release)
            return lock
        raise ConfigError(f"could not take {path}: other launches keep taking it; start one launch per run.dir")

    @staticmethod
    def _take_over(path: Path, me: dict) -> None:
        """Remove a stale lock (by rename: one of two racing launches wins), or refuse naming the holder."""
        holder = _read(path)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile
        reason = stale_reason(holder, age, me)
        if reason is None:
            who = f"host {holder['host']}, pid {holder['pid']}" if holder else "a launch that is writing it"
            job = f", Slurm job {holder['job']}" if holder and holder.get("job") else ""
            since = f", since {holder['since']}" if holder and holder.get("since") else ""
            raise ConfigError(f"run.dir={path.parent} is in use by another launch ({who}{job}{since}, lock {path}); "
                              f"wait for it to end or use another run.dir (delete {path} only if that launch is gone)")
        aside = path.with_name(f".{LOCK}.stale.{me['host']}.{me['pid']}")
        try:
            path.rename(aside)
        except FileNotFoundError:
            return  # another launch took it over first: try again
        aside.unlink(missing_ok=True)
        logger.warning("took over %s: %s", path, reason)

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError as err:
                logger.warning("could not refresh %s (%s); another launch may take this run.dir over", self.path, err)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if _read(self.path) == self.me:
            self.path.unlink(missing_ok=True)
