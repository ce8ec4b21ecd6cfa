"""Reports that cannot mislead: data provenance in every run folder, and the comparability rule.

A run stands beside a published number only when its config is the table preset's recipe (run
identity) and its data.json says real; the tests stand in for the real CIFAR files by putting the
tiny fake files' md5s into the registry (monkeypatch of provenance.reference_md5).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from analysis_fixtures import write_run
from conftest import REPO, run_folders, run_inprocess
from optrepro.analysis.comparability import changed_keys
from optrepro.analysis.load import load_runs
from optrepro.analysis.tables import comparison_tables, load_published, paper_views
from optrepro.analyze import analyze
from optrepro.config import compose_train
from optrepro.data import provenance
from optrepro.data.cifar import write_fake_cifar
from optrepro.runs import RunDir

PUBLISHED = REPO / "results" / "published_results.csv"
PRESET = ["experiment=eadam_table2", "task=cifar10_vgg11", "optimizer=adam", "seed=0"]


def _registry_with(monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, str]) -> None:
    """The real-dataset registry, with ``name``'s sums replaced by ``files`` (file -> md5)."""
    real = provenance.reference_md5
    monkeypatch.setattr(provenance, "reference_md5", lambda d: dict(files) if d == name else real(d))


def _fake_cifar_md5(root: Path) -> dict[str, str]:
    folder = write_fake_cifar(root, "cifar10", n_train=10, n_test=5)
    return {p.name: provenance.hash_file(p, "md5") for p in folder.iterdir()}


def _composed_run(runs: Path, overrides: list[str], final: float, data: dict | None, name: str) -> Path:
    """A finished run folder whose config.yaml is exactly what Hydra composes for ``overrides``."""
    cfg = OmegaConf.to_container(compose_train([*overrides, f"results_dir={runs}"]), resolve=True)
    folder = write_run(runs, task="cifar10_vgg11", optimizer="adam", seed=int(cfg["seed"]), curve=[final / 2, final],
                       name=name)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    if data is not None:
        RunDir(folder).write_data(data)
    return folder


@pytest.fixture
def smoke_and_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's folder: a profile=smoke run on fake CIFAR files, a preset run on (stand-in) real ones,
    and an old preset run without data.json."""
    runs = tmp_path / "runs"
    data = tmp_path / "data"
    sums = _fake_cifar_md5(data)
    fake = provenance.cifar("cifar10", data)
    _registry_with(monkeypatch, "cifar10", sums)
    real = provenance.cifar("cifar10", data)
    _composed_run(runs, [*PRESET, "profile=smoke", "task.data.verify_checksums=false"], 8.594, fake, "smoke")
    _composed_run(runs, PRESET, 88.0, real, "preset")
    _composed_run(runs, [*PRESET[:3], "seed=1"], 87.0, None, "old")
    return runs


# ------------------------------------------------------------------------------------- provenance
def test_cifar_verdict_against_torchvision_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = _fake_cifar_md5(tmp_path)
    fake = provenance.cifar("cifar10", tmp_path)
    assert fake["real"] is False and fake["check"] == "mismatch" and len(fake["files"]) == 7
    assert "CIFAR-10 files are fake or modified: 7 of 7 files fail the md5 of torchvision's CIFAR10" in fake["summary"]
    from torchvision.datasets import CIFAR10

    assert provenance.reference_md5("cifar10")["data_batch_1"] == dict(CIFAR10.train_list)["data_batch_1"]
    _registry_with(monkeypatch, "cifar10", sums)
    real = provenance.cifar("cifar10", tmp_path)
    assert real["real"] is True and real["check"] == "verified"
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    missing = provenance.cifar("cifar10", tmp_path)
    assert missing["real"] is False and "1 missing" in missing["summary"]


def test_manifest_tells_trees_apart(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    files = sorted((tmp_path / "a").iterdir())
    first = provenance.manifest(files, tmp_path)
    assert first["files"] == 3 and first["bytes"] == 6
    files[0].write_bytes(b"xx")  # same names, one size changed
    assert provenance.manifest(files, tmp_path)["sha256"] != first["sha256"]


def _data(folder: Path) -> dict:
    return json.loads((folder / "data.json").read_text())


def test_provenance_of_real_tiny_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One real run per loader kind: data.json is in the folder and says what was read and whether it is real."""
    from optrepro.data.imagefolder import write_fake_imagefolder
    from optrepro.data.ptb import write_fake_ptb
    from optrepro.data.voc import write_fake_voc

    data = tmp_path / "data"
    sums = _fake_cifar_md5(data)
    write_fake_imagefolder(data / "imagenet", classes=3, per_class=4, size=48)
    ptb = write_fake_ptb(data / "ptb", vocab_size=30)
    write_fake_voc(data / "voc", n_images=4)
    small = ["profile=smoke", "device=cpu"]
    cifar = [f"task.data.root={data}", "task.data.verify_checksums=false", "task.batch_size=2",
             "task.data.train_subset=4", "task.data.test_subset=4", "task.model.name=vgg11"]
    cases = {
        "cifar_fake": ["task=cifar10_resnet18", *cifar],
        "imagefolder": ["task=imagenet_resnet18", f"task.data.root={data / 'imagenet'}", "task.batch_size=4",
                        "task.data.train_subset=8", "task.data.test_subset=6"],
        "digits": ["task=digits_cnn"],
        "ptb": ["task=ptb_lstm1", f"task.data.root={data / 'ptb'}", "task.data.train_tokens=null",
                "task.data.eval_tokens=null"],  # the fake corpus is smaller than smoke's token limits
        "pydoc": ["task=textlm_lstm1", f"task.data.root={data / 'pydoc'}"],
        "voc": ["task=voc_fasterrcnn", f"task.data.root={data / 'voc'}", "task.model.backbone=tiny",
                "task.model.min_size=96", "task.model.max_size=128"],
        "toy2d": ["task=toy2d"],
    }
    records = {}
    for case, overrides in cases.items():
        outcome = run_inprocess([*overrides, *small, "optimizer=adam"], tmp_path / case)
        assert outcome.status == "completed", (case, outcome)
        (folder,) = run_folders(tmp_path / case)
        records[case] = _data(folder)
        assert RunDir(folder)._read_env() is not None  # the run store's other files are intact beside it
    assert records["cifar_fake"]["real"] is False and records["cifar_fake"]["dataset"] == "cifar10"
    assert {f["path"] for f in records["cifar_fake"]["files"]} >= {"cifar-10-batches-py/data_batch_1"}
    assert all(set(f) == {"path", "size", "md5"} for f in records["cifar_fake"]["files"])
    image = records["imagefolder"]
    assert image["real"] is False and image["check"] == "unverified" and "ILSVRC2012" in image["summary"]
    assert image["manifest"]["train"] == {**image["manifest"]["train"], "classes": 3, "images": 12, "files": 12}
    assert records["digits"]["kind"] == "bundled" and records["digits"]["real"] is True
    assert records["digits"]["files"][0]["path"] == "digits.csv.gz"
    assert records["ptb"]["real"] is False and records["ptb"]["check"] == "mismatch"
    assert sorted(f["md5"] for f in records["ptb"]["files"]) == sorted(provenance.hash_file(p, "md5")
                                                                    for p in ptb.values())
    assert records["pydoc"]["kind"] == "generated" and records["pydoc"]["real"] is False
    assert records["voc"]["check"] == "unverified" and records["voc"]["manifest"]["2007-test"]["images"] == 4
    assert records["toy2d"]["kind"] == "synthetic" and records["toy2d"]["real"] is False
    # the same fake CIFAR files, registered as the real ones: the run records real
    _registry_with(monkeypatch, "cifar10", sums)
    outcome = run_inprocess(["task=cifar10_resnet18", *cifar, *small, "optimizer=sgd"], tmp_path / "cifar_real")
    (folder,) = run_folders(tmp_path / "cifar_real")
    assert outcome.status == "completed" and _data(folder)["real"] is True
    assert _data(folder)["check"] == "verified"


def test_iwslt14_provenance_is_unverified(tmp_path: Path) -> None:
    from optrepro.data import iwslt14
    from optrepro.data.translation import text_provenance

    for split in iwslt14.SPLITS:
        for lang in ("de", "en"):
            (tmp_path / f"{split}.{lang}").write_text("ein satz\n")
    cfg = OmegaConf.create({"data": {"name": "iwslt14", "root": str(tmp_path)}})
    record = text_provenance(cfg, {"train": 1, "valid": 1, "test": 1})
    assert record["real"] is False and record["check"] == "unverified" and len(record["files"]) == 6
    assert "fairseq: train 160,239" in record["summary"] and "no reference checksum" in record["summary"]
    synthetic = text_provenance(OmegaConf.create({"data": {"name": "synthetic", "seed": 3}}), {})
    assert synthetic["kind"] == "synthetic"


def test_resumed_run_with_other_data_is_not_real(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    first = provenance.record("cifar10", "real", True, "verified", "CIFAR-10: real", files=[{"path": "a", "md5": "1"}])
    run.write_data(first)
    run.write_data(first)  # the same files again: unchanged
    assert _data(tmp_path)["real"] is True
    run.write_data({**first, "files": [{"path": "a", "md5": "2"}]})
    again = _data(tmp_path)
    assert again["real"] is False and "changed between attempts" in again["summary"]


# ------------------------------------------------------------------------------------- the rule
def test_changed_keys_name_every_leaf() -> None:
    ref = {"task": {"epochs": 200, "data": {"train_subset": None}}, "seed": 0, "flag": True}
    ours = {"task": {"epochs": 1, "data": {"train_subset": 128}, "extra": 1.5}, "seed": 0, "flag": 1}
    assert changed_keys(ref, ours) == ["flag True→1", "task.data.train_subset null→128", "task.epochs 200→1",
                                       "task.extra absent→1.5"]
    assert changed_keys(ref, ref) == []


def test_smoke_run_is_listed_not_compared(smoke_and_preset: Path) -> None:
    data = load_runs(smoke_and_preset)
    published = load_published(PUBLISHED)
    view = paper_views(data, published)["eadam2020_table2"]
    cell = view.numeric[(view.numeric.task == "cifar10_vgg11") & (view.numeric.optimizer == "adam")].iloc[0]
    assert cell.ours_n == 1 and cell.ours_mean == 88.0 and cell["diff"] == pytest.approx(88.0 - 88.95)
    assert view.display.loc[view.display.optimizer == "adam", "cifar10_vgg11 ours"].iloc[0].startswith("88 (n=1)")
    reasons = dict(zip(view.not_comparable.run, view.not_comparable.reason, strict=True))
    assert set(reasons) == {"smoke", "old"}
    smoke = reasons["smoke"]
    assert smoke.startswith("profile=smoke; changed keys: ")
    for key in ("task.epochs 200→1", "task.batch_size 128→32", "task.data.train_subset null→128",
                "task.data.verify_checksums True→False"):
        assert key in smoke, key
    assert "data: CIFAR-10 files are fake or modified" in smoke
    assert reasons["old"] == "no data provenance recorded"  # its config is the recipe; its data is unknown

    comparison = comparison_tables(data, published)
    numeric, display = comparison.per_task["cifar10_vgg11"]
    smoke_row = numeric[numeric.setting.str.contains("smoke")].iloc[0]
    assert smoke_row.comparable == 0 and math.isnan(smoke_row["diff"]) and smoke_row["mean"] == pytest.approx(8.594)
    assert display.loc[numeric.setting.str.contains("smoke"), "Δ vs published"].iloc[0] == "—"
    preset_row = numeric[~numeric.setting.str.contains("smoke")].iloc[0]
    assert preset_row.n == 2 and preset_row.comparable == 1  # the old folder is in the mean, not in the Δ
    assert preset_row["diff"] == pytest.approx(88.0 - preset_row.published)
    shown = display.loc[~numeric.setting.str.contains("smoke"), "Δ vs published"].iloc[0]
    assert shown.endswith("(n=1)")


def test_report_names_profiles_and_data_and_never_a_smoke_delta(smoke_and_preset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    analyze(smoke_and_preset, out, PUBLISHED, REPO / "configs", make_figures=False)
    report = (out / "REPORT.md").read_text()
    top = report.split("## Results per task")[0]
    assert "## Profiles and data" in top and "`smoke` (1 run)" in top and "`default` (2 runs)" in top
    assert "CIFAR-10: real" in top and "CIFAR-10 files are fake or modified" in top
    assert "no data provenance recorded" in top
    assert f"{8.594 - 88.95:+.3g}" not in report
    assert "not comparable: profile=smoke" in report
    paper = (out / "tables" / "paper_eadam2020_table2.md").read_text()
    assert "8.594" not in paper.split("Not compared")[0] and "not comparable: profile=smoke" in paper
    listed = pd.read_csv(out / "tables" / "not_comparable.csv")
    eadam = listed[listed.table == "paper_eadam2020_table2"]
    assert set(eadam.run) == {"smoke", "old"}
    # the preset run is EAdam Table 2's recipe (100-way heads, the reference's last partial batch): beside the
    # AdaBelief repo's curves of the same task it is listed, with what differs
    preset = listed[listed.run == "preset"]
    assert len(preset) and not preset.table.eq("paper_eadam2020_table2").any()
    assert preset.reason.str.contains("task.model.num_classes").all()


def test_provenance_of_gan_and_synthetic_task_runs(tmp_path: Path) -> None:
    """The GAN's CIFAR files, and the synthetic translation/detection sets, through real tiny runs."""
    write_fake_cifar(tmp_path / "data", "cifar10", n_train=64, n_test=32)
    cases = {
        "gan": ["task=cifar10_wgan", f"task.data.root={tmp_path / 'data'}", "task.data.verify_checksums=false"],
        "mt": ["task=synthetic_mt"],
        "det": ["task=synthetic_det"],
    }
    records = {}
    for case, overrides in cases.items():
        outcome = run_inprocess([*overrides, "profile=smoke", "optimizer=adam"], tmp_path / case)
        assert outcome.status == "completed", (case, outcome)
        (folder,) = run_folders(tmp_path / case)
        records[case] = _data(folder)
    assert records["gan"]["dataset"] == "cifar10" and records["gan"]["check"] == "mismatch"
    assert len(records["gan"]["files"]) == 7  # the test batch too (FID's real statistics may read it)
    assert records["mt"]["dataset"] == "synthetic_mt" and records["mt"]["kind"] == "synthetic"
    assert records["det"]["dataset"] == "synthetic_det" and records["det"]["real"] is False


def test_a_table_preset_run_stands_beside_its_own_papers_number(smoke_and_preset: Path) -> None:
    """cifar10_vgg11 adam has two published numbers (EAdam Table 2; the AdaBelief repo's final curve value,
    preferred for the 'final' value kind). An EAdam Table 2 preset run is not the AdaBelief repo's recipe, so
    the comparison puts EAdam's number beside it, never a Δ against a recipe it did not run."""
    data = load_runs(smoke_and_preset)
    numeric, _ = comparison_tables(data, load_published(PUBLISHED)).per_task["cifar10_vgg11"]
    preset_row = numeric[~numeric.setting.str.contains("smoke")].iloc[0]
    assert preset_row.published_ref == "eadam2020/table2" and preset_row.published == pytest.approx(88.95)
