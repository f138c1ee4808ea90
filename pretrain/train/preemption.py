"""Preemption: SIGTERM or SIGUSR1 to a rank, to torchrun (which forwards it to every rank's process
group), or to the whole job stops the run after the current step on every rank, with a checkpoint,
and exit code 0.

How the signal arrives (torch 2.13; docs/reliability.md has the whole story):
- torchrun catches SIGTERM, SIGINT, SIGHUP, SIGQUIT (``--signals-to-handle``, add SIGUSR1 to forward
  it too), sends the same signal to each rank's process group (``os.killpg``: the rank *and* its
  DataLoader workers), waits ``--shutdown-timeout`` seconds (default 30), then SIGKILLs what is left,
  and exits non-zero whatever the ranks did.
- DataLoader workers ignore these signals (pretrain/data/loader.py): the trainer decides, saves,
  then shuts its workers down; a worker that died anyway is restarted by the loader.
- The trainer records the signal here; at the next step boundary the ranks agree (one all-reduce,
  agreement.any_rank), save (checkpoint.py) and return.
"""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Once installed, a stop signal is recorded in ``received`` (its name) instead of ending the process.
    Nothing else runs in the handler: the loop reads the flag between steps."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def install(self) -> "StopSignals":
        self._previous = {signum: signal.signal(signum, self._record) for signum in STOP_SIGNALS}
        return self

    def _record(self, signum: int, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
