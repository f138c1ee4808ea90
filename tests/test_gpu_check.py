"""`make gpu-check`'s reduced CPU dry run (bench/gpu_check.py --dry-run): every check that can run on a
CPU runs at tiny sizes and passes, the CUDA-only ones are skipped with their reason, and the JSON and
Markdown reports are written. The full run needs a GPU (docs/benchmarks.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path, tmp_path_factory):
    from pretrain.data.corpus import prepare_embedded_corpus
    cache = tmp_path_factory.getbasetemp() / "train-corpus"  # shared with the trainer tests
    prepare_embedded_corpus(cache)
    command = [sys.executable, "-m", "pretrain", "bench", "gpu_check", "--dry-run", "--out", str(tmp_path),
               "--data-cache", str(cache)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["versions", "flex_vs_dense", "compiled_block", "block_mask", "flex_vs_flash",
                            "trainer_run"]
    assert {name: c["status"] for name, c in checks.items()} == {
        "versions": "pass", "flex_vs_dense": "pass", "compiled_block": "pass", "block_mask": "pass",
        "flex_vs_flash": "skipped", "trainer_run": "pass"}
    assert "CUDA only" in checks["flex_vs_flash"]["reason"]
    assert all(row["present"] for row in checks["versions"]["rows"])  # FSDP2 / DTensor / Flex APIs
    assert {row["gqa"].split()[0] for row in checks["flex_vs_dense"]["rows"]} == {"16:1", "8:1"}
    block = checks["compiled_block"]["numbers"]
    assert block["graphs_compiled"] == 1 and block["graph_breaks"] == 0
    assert [row["seq_len"] for row in checks["block_mask"]["rows"]] == [256, 512, 1024]
    run = checks["trainer_run"]["numbers"]
    assert run["resume_max_abs_loss_diff"] == 0.0 and len(run["eval_losses"]) == 2
    assert (tmp_path / "trainer_run" / "resumed" / "checkpoints" / "step_00000012" / "complete").is_file()
    assert "| trainer_run | pass |" in (tmp_path / "gpu_check.md").read_text()
