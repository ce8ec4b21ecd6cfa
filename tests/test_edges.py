"""One line at every edge (issue 23, items 3 and 5): hints that name a key something reads, refusals before
anything is written, and a property test over every field of every task schema."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import REPO, cli, run_folders
from optrepro.status import RunStatus
from optrepro.tasks.schemas import SCHEMAS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def main_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                    ) -> tuple[int, list[str]]:
    """``python -m optrepro.train ARGV`` up to where it refuses: (exit status, non-empty stderr lines)."""
    from optrepro import train

    monkeypatch.setattr(sys, "argv", ["optrepro-train", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    return int(exit_info.value.code or 0), [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def nothing_under(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


# ------------------------------------------------------------------------------ hints that are right
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # a top-level key nothing reads, with or without +: named, with where a key of that name lives
        (["eps=1e-8"], "error: unknown config key 'eps': nothing reads a top-level eps; it is optimizer.eps "
                       "(set optimizer.eps=1e-8)"),
        (["+eps=1e-8"], "error: unknown config key 'eps': nothing reads a top-level eps; it is optimizer.eps "
                        "(set optimizer.eps=1e-08)"),
        (["+wandb.quiet=true"], "error: unknown config key 'wandb.quiet': nothing reads it; see "
                                "`python -m optrepro.train --cfg job` for the keys"),
        # + on a key that exists: set it without +
        (["+wandb.verbose=true"], "error: wandb.verbose is already a key: set it without + (wandb.verbose=true)"),
        # + on a schema-checked node: refused with the reason
        (["optimizer=sgd", "+optimizer.eps=1e-8"], "error: optimizer.eps is not an argument of SGD"),
        (["+task.nope=1"], "error: unknown config key 'task.nope' (not a key of the Toy2D task schema"),
        # a sweep names the job and the optimizer that lacks the key, and never hints at +key
        (["-m", "optimizer=adam,sgd", "optimizer.eps=1e-8"],
         "error: sweep job 'optimizer=sgd optimizer.eps=1e-8': unknown config key 'optimizer.eps': optimizer sgd "
         "has no eps (its keys: lr, momentum, dampening, weight_decay, nesterov, foreach, fused); leave "
         "optimizer.eps out for sgd"),
        (["-m", "optimizer=adam,sgd", "+optimizer.eps=1e-8"],
         "error: sweep job 'optimizer=adam +optimizer.eps=1e-8': optimizer.eps is already a key of adam: set it "
         "without + (optimizer.eps=1e-8)"),
        # a no-op run
        (["optimizer.lr=0"], "error: optimizer.lr=0 leaves every parameter where it starts (a no-op run); use "
                             "optimizer.lr > 0"),
        (["task.steps=0"], "error: task.steps must be a positive integer, got 0"),
        (["task=digits_cnn", "task.epochs=0"], "error: task.epochs must be a positive integer, got 0"),
        # devices this machine does not have
        (["device=mps"], "error: device=mps but MPS (Apple GPU) is not available here; use device=cpu or "
                         "device=auto"),
        (["device=xla"], "error: device=xla is not supported by the training loop; use auto, cpu, cuda or cuda:N"),
        (["device=meta"], "error: device=meta is not supported by the training loop; use auto, cpu, cuda or "
                          "cuda:N"),
        (["device=cuda:99"], "error: device=cuda:99 but "),
        # two of Hydra's modes at once
        (["-m", "seed=0,1", "--cfg", "job"],
         "error: --cfg shows one job's config and does not combine with -m; drop -m and give one value per "
         "swept key (e.g. optimizer=adam) to see that job's config"),
        (["--info", "-m"], "error: --info and -m cannot be combined: Hydra does one of --run, -m, --cfg, --info, "
                           "-sc at a time"),
    ],
)
def test_edge_is_one_line_exit_2_nothing_written(args: list[str], expected: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "runs"
    code, lines = main_in_process([*args, f"results_dir={results}"], monkeypatch, capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].replace(f" results_dir={results}", "").startswith(expected), lines[0]
    assert nothing_under(results)


def test_the_hint_it_gives_is_a_run_that_uses_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Following the eps hint (optimizer.eps=1e-8) is accepted; a key nothing reads never is."""
    from optrepro.config import preflight

    preflight(["optimizer.eps=1e-8", f"results_dir={tmp_path}"])  # no error
    code, lines = main_in_process(["+eps=1e-8", f"results_dir={tmp_path}"], monkeypatch, capsys)
    assert code == 2 and "+" not in lines[0].split("it is", 1)[1]


def test_file_as_results_dir_of_a_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for results, tail in ((afile, "is not a folder;"), (afile / "a" / "b", f"is not a folder ({afile} is a file);")):
        code, lines = main_in_process(["-m", "seed=0,1", f"results_dir={results}"], monkeypatch, capsys)
        assert code == 2 and len(lines) == 1
        assert lines[0] == (f"error: sweep job 'seed=0 results_dir={results}': results_dir {results} {tail} "
                            "set results_dir=<a folder>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_cuda_device_index_beyond_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from optrepro.config import resolve_device
    from optrepro.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"^device=cuda:3 but this machine has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        resolve_device("cuda:3")


# ------------------------------------------------------------------------------ sizes the data cannot fill
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["task=digits_cnn", "task.batch_size=100000"],
         "error: task.batch_size=100000 but there are only 1347 training images; use task.batch_size <= 1347"),
        (["task=digits_cnn", "task.data.train_subset=100000"],
         "error: task.data.train_subset=100000 but there are only 1347 train images in digits; use "
         "task.data.train_subset <= 1347"),
        (["task=digits_cnn", "task.data.test_subset=451"],
         "error: task.data.test_subset=451 but there are only 450 test images in digits; use "
         "task.data.test_subset <= 450"),
        (["task=synthetic_mt", "task.data.train_subset=301"],
         "error: task.data.train_subset=301 but there are only 300 train sentence pairs; use "
         "task.data.train_subset <= 300"),
        (["task=synthetic_det", "task.batch_size=33"], "error: 32 training images < task.batch_size=33"),
    ],
)
def test_sizes_beyond_the_data_are_refused_before_the_run_folder(args: list[str], expected: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from optrepro.config import compose_train
    from optrepro.train import run

    results = tmp_path / "runs"
    outcome = run(compose_train([*args, "profile=smoke", f"results_dir={results}", "wandb.mode=disabled",
                                 "progress=false"]))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert outcome.status == RunStatus.ERROR and lines == [expected]
    assert nothing_under(results)


# ------------------------------------------------------------------------------ shell completion, analyze
def test_shell_completion_install_and_query_as_hydra_documents() -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    script = subprocess.run([sys.executable, str(REPO / "src" / "optrepro" / "train.py"), "-sc", "install=bash"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert script.returncode == 0, script.stderr
    assert "hydra_bash_completion()" in script.stdout
    assert script.stdout.rstrip().endswith("complete -o nospace -o default -F hydra_bash_completion python")
    query = subprocess.run([sys.executable, "-m", "optrepro.train", "-sc", "query=bash"], capture_output=True,
                           text=True, timeout=120, cwd=REPO, env={**env, "COMP_LINE": "optrepro-train optimizer=ad"})
    assert query.returncode == 0, query.stderr
    assert "optimizer=adam" in query.stdout.split() and "optimizer=adabelief" in query.stdout.split()
    helptext = cli(["--hydra-help"]).stdout
    assert "-sc install=bash" in helptext  # what --hydra-help tells a user to run is what works above


@pytest.mark.parametrize("case", ["missing", "empty", "file", "default"])
def test_analyze_refuses_what_has_no_runs(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from optrepro.analyze import main

    runs = tmp_path / "runs"
    if case == "empty":
        runs.mkdir()
    elif case == "file":
        runs.write_text("x")
    monkeypatch.chdir(tmp_path)
    argv = [] if case == "default" else ["--runs", str(runs), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    shown = "results/runs" if case == "default" else str(runs)
    expected = {
        "missing": f"error: runs folder {shown} does not exist; pass --runs FOLDER",
        "default": f"error: runs folder {shown} does not exist; pass --runs FOLDER",
        "file": f"error: runs folder {shown} is not a folder; pass --runs FOLDER",
        "empty": f"error: no run folders under {shown} (a run folder holds config.yaml); train first",
    }[case]
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "results" / "REPORT.md").exists()


def test_analyze_help_states_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from optrepro.analyze import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: results/runs under the current folder" in text
    assert "default: results under the current folder" in text


# ------------------------------------------------------------------------------ every field of every schema
#: per task kind, a task config of that kind and the overrides that make its run take seconds; kinds whose
#: data is not in this checkout point at an empty folder and must end in their one-line "not found" error
def _tiny(kind: str, data: Path) -> list[str]:
    return {
        "toy2d": ["task=toy2d", "task.steps=4", "task.eval_every=2"],
        "image_classification": ["task=digits_cnn", "task.epochs=1", "task.data.train_subset=64",
                                 "task.data.test_subset=32", "task.batch_size=32"],
        "language_model": ["task=textlm_lstm1", f"task.data.root={data / 'pydoc'}", "task.epochs=1",
                           "task.data.train_tokens=1200", "task.data.eval_tokens=300", "task.model.emsize=8",
                           "task.model.nhid=8", "task.batch_size=4", "task.bptt=10"],
        "translation": ["task=synthetic_mt", "task.epochs=1", "task.data.train_size=40", "task.data.valid_size=8",
                        "task.data.test_size=8", "task.valid_bleu_subset=4", "task.model.d_model=16",
                        "task.model.ffn_dim=16", "task.model.encoder_layers=1", "task.model.decoder_layers=1"],
        "gan": ["task=cifar10_dcgan", f"task.data.root={data / 'absent'}", "task.fid.enabled=false"],
        "ring_gan": ["task=ring_gan", "task.steps=4", "task.eval_every=2", "task.eval_samples=64",
                     "task.hidden=8", "task.batch_size=16"],
        "detection": ["task=synthetic_det", "task.epochs=1", "task.data.n_train=4", "task.data.n_test=2",
                      "task.batch_size=2", "task.eval_batch_size=2", "task.data.image_size=64",
                      "task.model.min_size=64", "task.model.max_size=64", "task.model.width=8"],
        "lm_pretrain": ["task=lm_pretrain_tiny", f"task.data.root={data / 'pydoc_tokens'}", "task.steps=4",
                        "task.eval_every=2", "task.warmup_steps=1", "task.data.eval_tokens=256", "task.batch_size=4",
                        "task.seq_len=16", "task.eval_batch_size=8"],
        "finetune_glue": ["task=glue_rte", f"task.model.name={data / 'absent'}", "task.data.source=tsv",
                          f"task.data.root={data / 'absent'}", "task.data.download=false"],
    }[kind]


def _leaves(schema: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, declared type, default) of every leaf field of a schema dataclass."""
    from optrepro.tasks.schemas import _resolve

    out = []
    for f in dataclasses.fields(schema):
        tp = _resolve(f.type)
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")
        elif f.name not in ("kind", "fault"):  # the kind picks the schema; fault is the test-only hook
            out.append((f"{prefix}{f.name}", tp, f.default))
    return out


FIELDS = sorted(((kind, key, tp) for kind, (schema, _) in SCHEMAS.items() for key, tp, _ in _leaves(schema)),
                key=lambda f: (f[0], f[1]))
INTS = ["0", "1", "2", "-1", "3", "9223372036854775808", "1.5", "abc", "null", "true", "[1]"]
FLOATS = ["0", "0.0", "1e-12", "0.5", "1", "2.5", "-1", "1e308", "nan", "inf", "-inf", "abc", "null", "[1]"]
OTHERS = ["''", "abc", "none", "0", "-1", "true", "false", "null", "[]", "[0]", "[-1]", "[1,0]", "[abc]"]


def _values(tp: Any) -> list[str]:
    """Boundary and absurd command-line values for a field of type ``tp``."""
    base = next((a for a in get_args(tp) if a is not type(None)), tp) if get_origin(tp) is not None else tp
    if base is bool:
        return ["true", "false", "0", "abc", "null"]
    if base is int:
        return INTS
    if base is float:
        return FLOATS
    return OTHERS


@st.composite
def _field_value(draw: st.DrawFn) -> tuple[str, str, str]:
    kind, key, tp = draw(st.sampled_from(FIELDS))
    return kind, key, draw(st.sampled_from(_values(tp)))


def _overrides(kind: str, key: str, value: str, data: Path, results: Path) -> list[str]:
    """The kind's tiny run with the drawn ``task.<key>=<value>`` in place of any value it sets there."""
    drawn = f"task.{key}"
    base = [o for o in _tiny(kind, data) if o.split("=", 1)[0] != drawn]
    return [*base, "profile=smoke", f"{drawn}={value}", f"results_dir={results}", "wandb.mode=disabled",
            "progress=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def test_every_schema_field_is_listed() -> None:
    """The property test below draws from every field of every schema (a schema added later joins it)."""
    assert {kind for kind, _, _ in FIELDS} == set(SCHEMAS)
    assert ("translation", "model.heads", int) in FIELDS and ("gan", "fid.num_real", int | None) in FIELDS


@settings(max_examples=int(os.environ.get('EDGE_EXAMPLES', 30)), derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=_field_value())
def test_any_field_value_completes_or_is_one_line_with_nothing_on_disk(
        drawn: tuple[str, str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What main does for one job, in process: preflight (exit 2 on a UserError), then run (an ERROR outcome
    exits 2). Each run completes (or diverges) or says one ``error:`` line and leaves no folder behind."""
    from optrepro.config import compose_train, preflight
    from optrepro.errors import UserError
    from optrepro.train import run

    kind, key, value = drawn
    results = tmp_path_factory.mktemp("runs") / "r"
    overrides = _overrides(kind, key, value, data_dir, results)
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(results.parent)  # a drawn relative path (task.data.root=false is the folder "False") lands here
    try:
        preflight(overrides)
    except UserError as exc:
        lines = [f"error: {exc}"]
        status = RunStatus.ERROR
    else:
        status = run(compose_train(overrides)).status
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    finally:
        os.chdir(cwd)
    event(f"{kind}: {status}")  # --hypothesis-show-statistics shows how the examples ended
    if status == RunStatus.ERROR:
        assert len(lines) == 1, (overrides, lines)
        assert nothing_under(results), (overrides, sorted(results.rglob("*")))
    else:
        assert status in (RunStatus.COMPLETED, RunStatus.DIVERGED), (overrides, status)
        assert lines == [] and len(run_folders(results)) == 1
