"""scripts/bench_optim.py --quick runs end to end and writes the JSON record the results use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_optim_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "optim_quick.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_optim.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ms/step" in proc.stdout and str(out) in proc.stdout
    record = json.loads(out.read_text())
    assert set(record) >= {"machine", "settings", "memory_method", "targets", "param_sets"}
    assert set(record["machine"]) >= {"cpu_model", "cpu_cores", "torch_version", "hostname"}
    quick = record["param_sets"]["quick"]
    assert quick["numel"] > 0 and quick["n_tensors"] > 0
    candidates = quick["candidates"]
    expected = {"torch_adam_foreach", "torch_adam_fused", "adabelief_foreach", "adabelief_fused"}
    assert set(candidates) >= expected
    for result in candidates.values():
        assert set(result) >= {"ms_median", "ms_min", "peak_extra_bytes", "state_bytes", "first_step_s"}
        assert result["ms_median"] > 0 and result["state_bytes"] > 0
    assert "adabelief_foreach/torch_adam_foreach" in quick["ratios"]
    assert "adabelief_pytorch_0.2.1/adabelief_fused" in quick["ratios"]
