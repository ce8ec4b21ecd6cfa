"""The detection tasks through the real entry point: a tiny VOC tree in the real format, the
synthetic demo at smoke size, the missing-weights error."""

from __future__ import annotations

from pathlib import Path

from conftest import cli, metrics, run_folders, run_inprocess, summary
from optrepro.data.voc import write_fake_voc


def test_voc_smoke_run_through_the_real_loader(tmp_path: Path) -> None:
    write_fake_voc(tmp_path / "voc", n_images=4)
    overrides = ["task=voc_fasterrcnn", "optimizer=adabelief", "profile=smoke", f"task.data.root={tmp_path / 'voc'}",
                 "task.model.backbone=tiny", "task.model.min_size=96", "task.model.max_size=128"]
    outcome = run_inprocess(overrides, tmp_path / "runs")
    assert outcome.status == "completed", outcome
    (folder,) = run_folders(tmp_path / "runs")
    assert folder.name.startswith("voc_fasterrcnn_fpn_adabelief")
    s = summary(folder)
    assert s["metric"] == "map50_11pt" and s["mode"] == "max" and s["steps"] == 2  # 4 images (smoke), batch 2
    (row,) = metrics(folder)
    assert 0.0 <= row["map50"] <= 100.0 and 0.0 <= row["map50_11pt"] <= 100.0 and row["lr"] == 1e-4
    assert s["detection"]["train_images"] == 4 and s["detection"]["test_images"] == 4


def test_synthetic_smoke_run_and_missing_weights_cli(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=synthetic_det", "optimizer=eadam", "profile=smoke", "task.metric=map50_11pt"],
                            tmp_path / "runs")
    assert outcome.status == "completed", outcome
    (folder,) = run_folders(tmp_path / "runs")
    s = summary(folder)
    assert s["metric"] == "map50_11pt" and s["final"]["map50_11pt"] == s["best"]["value"]
    assert s["detection"]["classes"] == ["rectangle", "ellipse", "triangle"]

    missing = tmp_path / "none" / "resnet50-0676ba61.pth"
    proc = cli(["task=voc_fasterrcnn", f"task.model.backbone_weights={missing}", f"results_dir={tmp_path / 'r2'}"],
               timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())
