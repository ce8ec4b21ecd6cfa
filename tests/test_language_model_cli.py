"""The language-model tasks through the real entry point: PTB smoke runs on tiny fake files, the
pydoc demo corpus, the missing-data error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import REPO, cli, compose, metrics, run_folders, run_inprocess, summary
from optrepro.data.ptb import write_fake_ptb


@pytest.mark.parametrize(
    ("task", "optimizer", "extra", "expected"),
    [
        ("ptb_lstm1", "adabelief", [], {"lr": 1e-3, "eps": 1e-16, "weight_decay": 1.2e-6, "rectify": False}),
        ("ptb_lstm2", "adabelief", [], {"lr": 1e-2, "eps": 1e-12, "weight_decouple": False}),
        ("ptb_lstm3", "adam", [], {"lr": 1e-2, "eps": 1e-8, "weight_decay": 1.2e-6}),
        ("ptb_lstm1", "sgd", [], {"lr": 30.0, "momentum": 0.0, "weight_decay": 1.2e-6}),
        ("ptb_lstm2", "adabound", [], {"lr": 1e-2, "final_lr": 30.0, "gamma": 1e-3}),
        ("ptb_lstm3", "adabelief", ["optimizer.eps=1e-8", "optimizer.lr=0.002"], {"lr": 2e-3, "eps": 1e-8}),
    ],
)
def test_recipes_per_depth_and_cli_wins(task: str, optimizer: str, extra: list[str],
                                        expected: dict[str, float]) -> None:
    from optrepro.config import resolve_interpolations

    overrides = [f"task={task}", f"optimizer={optimizer}", *extra]
    cfg, _ = compose(overrides)
    resolved = resolve_interpolations(cfg)
    assert {k: resolved.optimizer[k] for k in expected} == expected


def test_eadam_table3_preset_is_the_paper_grid() -> None:
    cfg, choices = compose(["experiment=eadam_table3"])
    assert choices["task"] == "ptb_lstm1" and choices["optimizer"] == "adam"
    eadam, _ = compose(["experiment=eadam_table3", "optimizer=eadam"])
    assert eadam.optimizer.eps == 1e-16 and eadam.optimizer.weight_decay == 1.2e-6
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        full = hydra_compose(config_name="train", overrides=["experiment=eadam_table3"],
                             return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = full.hydra.sweeper.params
    assert params.task == "ptb_lstm1,ptb_lstm2,ptb_lstm3" and params.optimizer == "adam,radam,adabelief,eadam"


def test_ptb_smoke_runs_of_all_three_depths(tmp_path: Path) -> None:
    """Through the preset (its default task has task.data for the multirun's base config); the
    command line narrows its optimizer sweep to one."""
    write_fake_ptb(tmp_path / "ptb", lines={"train": 300, "valid": 40, "test": 40}, vocab_size=60)
    proc = cli(["-m", "experiment=eadam_table3", "task=ptb_lstm1,ptb_lstm2,ptb_lstm3", "optimizer=adabelief",
                "profile=smoke", "task.data.train_tokens=null", "task.data.eval_tokens=null",  # smaller than smoke's
                f"task.data.root={tmp_path / 'ptb'}", f"results_dir={tmp_path / 'runs'}", "progress=false"],
               timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = run_folders(tmp_path / "runs")
    assert sorted(f.name.split("_adabelief")[0] for f in folders) == ["ptb_lstm1", "ptb_lstm2", "ptb_lstm3"]
    for folder in folders:
        s = summary(folder)
        assert s["status"] == "completed", s
        assert s["metric"] == "test_ppl_at_best_valid" and s["mode"] == "min"
        (row,) = metrics(folder)  # smoke: one epoch, one evaluation
        assert {"valid_ppl", "test_ppl", "valid_loss", "test_ppl_at_best_valid", "best_test_ppl"} <= set(row)
        assert 1.0 < row["test_ppl"] < 1e4 and row["valid_ppl"] == pytest.approx(math.exp(row["valid_loss"]))
        assert s["lm"]["unigram_test_ppl"] > 1.0 and s["corpus"]["vocab_size"] <= 61  # 60 words + <eos>
        # the generalization gap: a held-in span of the training stream as long as the test split
        assert row["heldin_ppl"] == pytest.approx(math.exp(row["heldin_loss"]))
        assert s["gap"]["metric"] == "heldin_ppl" and s["gap"]["heldin_size"] == s["corpus"]["tokens"]["test"]
        assert s["gap"]["value"] == pytest.approx(row["heldin_ppl"] - row["test_ppl"])


def test_textlm_smoke_reports_unigram_perplexity(tmp_path: Path) -> None:
    root = tmp_path / "pydoc"
    overrides = ["task=textlm_lstm1", "optimizer=adam", "profile=smoke", f"task.data.root={root}"]
    outcome = run_inprocess(overrides, tmp_path / "runs")
    assert outcome.status == "completed", outcome
    assert (root / "ptb.train.txt").is_file() and (root / "meta.json").is_file()
    (folder,) = run_folders(tmp_path / "runs")
    s = summary(folder)
    assert s["lm"]["unigram_test_ppl"] > 10 and s["final"]["test_ppl_at_best_valid"] > 1
    assert s["lm"]["test_ppl_at_best_valid"] == pytest.approx(s["final"]["test_ppl_at_best_valid"])
    assert set(s["corpus"]["sha256"]) == {"train", "valid", "test"}
    # the gap, and the validation metric a tuning sweep is told (valid, never test)
    final = s["final"]
    assert s["gap"]["value"] == pytest.approx(final["heldin_ppl"] - final["test_ppl"])
    assert s["gap"]["heldin_size"] == 1000  # smoke's eval_tokens: the test split's length
    assert s["val_metric"] == "valid_ppl" and outcome.objective == pytest.approx(final["valid_ppl"])


def test_missing_ptb_is_reported_before_any_folder(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=ptb_lstm1", "profile=smoke", f"task.data.root={tmp_path / 'none'}"],
                            tmp_path / "runs")
    assert outcome.status == "error"
    assert "task.data.download=true" in outcome.reason and "\n" not in outcome.reason
    assert run_folders(tmp_path / "runs") == []


def test_bad_value_names_its_key(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=ptb_lstm1", "task.model.wdrop=1.5"], tmp_path / "runs")
    assert outcome.status == "error" and "task.model.wdrop" in outcome.reason


@pytest.mark.slow
def test_textlm_demo_beats_the_unigram_model(tmp_path: Path) -> None:
    """The full demo (about a minute or two on one CPU core)."""
    proc = cli(["task=textlm_lstm1", "optimizer=adabelief", f"task.data.root={tmp_path / 'pydoc'}",
                f"results_dir={tmp_path / 'runs'}", "progress=false"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path / "runs")
    s = summary(folder)
    assert s["lm"]["test_ppl_at_best_valid"] < 0.5 * s["lm"]["unigram_test_ppl"]
