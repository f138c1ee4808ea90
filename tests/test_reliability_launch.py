"""launch/slurm.sbatch under a fake Slurm: the time-limit signal reaches the ranks' launcher and the job
is requeued after they saved; one torchrun per node with rendezvous on the first node; no hard-coded
virtual environment."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "launch" / "slurm.sbatch"

FAKE_SRUN = """#!/usr/bin/env bash
# stands in for srun + the torchruns: records its command line, ends (0) when the trainer would have saved
printf '%s\\n' "$@" > "$LOG/srun.args"
trap 'echo USR1 > "$LOG/srun.signal"; exit 0' USR1
touch "$LOG/srun.started"
while true; do sleep 0.1; done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1" in
    show) printf 'node17\\nnode18\\n' ;;
    requeue) echo "$2" >> "$LOG/requeued" ;;
esac
"""


def test_time_limit_signal_reaches_the_ranks_then_the_job_is_requeued(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path), "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node[17-18]", "SLURM_JOB_NUM_NODES": "2"}
    job = subprocess.Popen(["bash", str(SBATCH), "configs/smoke.yaml", "train.max_steps=9"], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "srun.started").exists():
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
    assert job.wait(timeout=60) == 0
    assert (tmp_path / "srun.signal").read_text() == "USR1\n"
    assert (tmp_path / "requeued").read_text() == "77\n"
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert args[:3] == ["--kill-on-bad-exit=1", "--ntasks-per-node=1", "python"]  # PYTHON defaults to PATH's
    assert {"--nnodes=2", "--rdzv_endpoint=node17:29500", "--rdzv_id=77", "--rdzv_backend=c10d",
            "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"} <= set(args)
    assert args[args.index("pretrain"):] == ["pretrain", "train", "--config", "configs/smoke.yaml", "train.max_steps=9"]
    text = SBATCH.read_text()
    assert "#SBATCH --signal=B:USR1@120" in text and ".venv" not in text


def test_a_job_that_ends_without_the_signal_is_not_requeued(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\nexit 3\n")
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path), "SLURM_JOB_ID": "78",
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1"}
    job = subprocess.run(["bash", str(SBATCH), "configs/smoke.yaml"], env=env, cwd=tmp_path, timeout=60)
    assert job.returncode == 3
    assert not (tmp_path / "requeued").exists()
