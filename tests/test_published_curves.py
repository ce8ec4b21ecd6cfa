"""The authors' curves as data: scripts/published_curves.py rebuilds the CSV byte-for-byte from curve files
in the reference's own format (legacy torch.save, written here by the test), and the committed CSV agrees
with the published numbers that were read off the same curves by hand."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

from optrepro.analysis import curves

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "published_curves.csv.gz"
SHA = "0123456789abcdef0123456789abcdef01234567"
CIFAR = "PyTorch_Experiments/classification_cifar10/curve"
LSTM = "PyTorch_Experiments/LSTM/curve"
VGG_ADAM = "vgg-adam-lr0.001-betas0.9-0.999-wdecay0.0005-eps1e-08-run0-resetFalse"
PTB_SGD = ("PTB.pt-niter-200-optimizer-sgd-nlayers2-lr30.0-clip-0.25-eps1e-08-epsqrt1e-08-betas-0.9-0.999-run0-"
           "wdecay1.2e-06-when-[100, 145]")


def _script():
    spec = importlib.util.spec_from_file_location("published_curves", REPO / "scripts" / "published_curves.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _legacy_save(obj: object, path: Path) -> None:
    """The reference's format: torch.save before 1.6 (no zip container)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _fake_checkout(root: Path) -> Path:
    _legacy_save({"train_acc": [40.5, 60.25], "test_acc": [45.0, 0.1 + 0.2]}, root / CIFAR / VGG_ADAM)
    _legacy_save({"train_loss": [300.0, 150.123456789], "test_loss": [250.0, 140.5]}, root / LSTM / PTB_SGD)
    (root / CIFAR / "readme.txt").write_text("not a curve")  # other files in the folder are skipped
    return root


EXPECTED = (
    "task,optimizer,epoch,metric,value,source\n"
    f"cifar10_vgg11,adam,1,test_acc,45.0,juntang-zhuang/Adabelief-Optimizer@{SHA}:{CIFAR}/{VGG_ADAM}\n"
    f"cifar10_vgg11,adam,2,test_acc,0.30000000000000004,juntang-zhuang/Adabelief-Optimizer@{SHA}:{CIFAR}/{VGG_ADAM}\n"
    f"cifar10_vgg11,adam,1,train_acc,40.5,juntang-zhuang/Adabelief-Optimizer@{SHA}:{CIFAR}/{VGG_ADAM}\n"
    f"cifar10_vgg11,adam,2,train_acc,60.25,juntang-zhuang/Adabelief-Optimizer@{SHA}:{CIFAR}/{VGG_ADAM}\n"
    f'ptb_lstm2,sgd,1,test_ppl,250.0,"juntang-zhuang/Adabelief-Optimizer@{SHA}:{LSTM}/{PTB_SGD}"\n'
    f'ptb_lstm2,sgd,2,test_ppl,140.5,"juntang-zhuang/Adabelief-Optimizer@{SHA}:{LSTM}/{PTB_SGD}"\n'
    f'ptb_lstm2,sgd,1,train_ppl_last_interval,300.0,"juntang-zhuang/Adabelief-Optimizer@{SHA}:{LSTM}/{PTB_SGD}"\n'
    f'ptb_lstm2,sgd,2,train_ppl_last_interval,150.123456789,"juntang-zhuang/Adabelief-Optimizer@{SHA}:{LSTM}/{PTB_SGD}"\n'
)


def test_script_rebuilds_the_csv_byte_for_byte(tmp_path: Path) -> None:
    ref = _fake_checkout(tmp_path / "ref")
    plain, packed = tmp_path / "out.csv", tmp_path / "out.csv.gz"
    script = _script()
    assert script.main(["--ref", str(ref), "--commit", SHA, "--out", str(plain)]) == 0
    assert plain.read_bytes() == EXPECTED.encode()
    assert script.main(["--ref", str(ref), "--commit", SHA, "--out", str(packed)]) == 0
    assert gzip.decompress(packed.read_bytes()) == EXPECTED.encode()
    first = packed.read_bytes()
    assert script.main(["--ref", str(ref), "--commit", SHA, "--out", str(packed)]) == 0
    assert packed.read_bytes() == first  # no time stamp or name in the gzip header
    frame = curves.load_published_curves(packed)  # floats read back exactly
    assert frame.value.tolist()[:2] == [45.0, 0.1 + 0.2]
    # without .git the commit must be given
    assert script.main(["--ref", str(ref), "--out", str(plain)]) == 2
    assert script.main(["--ref", str(tmp_path / "nothing"), "--commit", SHA, "--out", str(plain)]) == 2


def test_a_curve_file_naming_a_class_is_refused(tmp_path: Path) -> None:
    """weights_only loading: a pickle that would build an arbitrary object never runs."""
    path = tmp_path / CIFAR / VGG_ADAM
    _legacy_save({"train_acc": [1.0], "test_acc": [2.0]}, path)
    assert curves.read_curve_file(path) == {"train_acc": [1.0], "test_acc": [2.0]}
    _legacy_save({"train_acc": [1.0], "test_acc": pd.Timestamp(0)}, path)
    with pytest.raises(pickle.UnpicklingError):
        curves.read_curve_file(path)


def test_committed_csv_matches_the_published_numbers() -> None:
    """Every 'repo_curves' number of published_results.csv (typed from the same curves, rounded to 2 decimals)
    is the final or best value of the committed curve; each curve runs over contiguous epochs 1..n."""
    from optrepro.analysis.tables import load_published

    data = curves.load_published_curves(COMMITTED)
    assert list(data.columns) == curves.COLUMNS
    assert set(data.task) == {*curves.CIFAR_MODELS.values(), "ptb_lstm1", "ptb_lstm2", "ptb_lstm3"}
    assert data.source.str.startswith(f"{curves.REFERENCE_REPO}@").all()
    for _, sub in data.groupby(["task", "optimizer", "metric"]):
        assert sorted(sub.epoch) == list(range(1, len(sub) + 1))
    pub = load_published(REPO / "results" / "published_results.csv")
    rows = pub[pub.table == "repo_curves"]
    assert len(rows) > 0
    for _, row in rows.iterrows():
        sub = data[(data.task == row.task) & (data.optimizer == row.optimizer) & (data.metric == row.metric)]
        sub = sub.sort_values("epoch")
        best = sub.value.max() if row.metric.endswith("acc") else sub.value.min()
        value = sub.value.iloc[-1] if row.which == "final" else best
        assert round(value, 2) == pytest.approx(row.value, abs=1e-9), (row.task, row.optimizer, row.which)
