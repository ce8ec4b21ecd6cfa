"""The AdaBelief authors' own per-epoch curves as numbers, and their overlay on ours.

The AdaBelief repository publishes the logs its figures were drawn from:
``PyTorch_Experiments/classification_cifar10/curve/<model>-<optimizer>-...`` (a dict ``train_acc`` /
``test_acc``, one float per epoch, 200 epochs) and ``PyTorch_Experiments/LSTM/curve/PTB.pt-...-optimizer-
<optimizer>-nlayers<n>-...`` (a dict ``train_loss`` / ``test_loss`` whose values are perplexities: its
``main.py`` appends ``math.exp`` of the loss; ``train_loss`` is the perplexity of the epoch's last
logging interval, ``test_loss`` that of the whole test set). They are ``torch.save`` files in the
pre-1.6 (legacy, non-zip) format holding only dicts, lists and floats, read with
``torch.load(weights_only=True)``: torch's restricted unpickler, which refuses any class a pickle
could name, so a file from the checkout cannot run code.

:func:`build_rows` turns a checkout into rows (task, optimizer, epoch, metric, value, source) in our
names (:data:`CIFAR_MODELS`, :data:`LSTM_METRICS`); :func:`write_csv` writes them byte-for-byte
reproducibly (fixed order, ``repr`` of each float: the shortest text that reads back to the same
double). ``scripts/published_curves.py --ref DIR`` is the command line; the analysis reads the CSV
with :func:`load_published_curves` and draws :func:`overlay_figures`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE_REPO = "juntang-zhuang/Adabelief-Optimizer"
CIFAR_DIR = "PyTorch_Experiments/classification_cifar10/curve"
LSTM_DIR = "PyTorch_Experiments/LSTM/curve"
#: the reference's model name (first part of a CIFAR curve's file name) -> our task
CIFAR_MODELS = {"vgg": "cifar10_vgg11", "resnet": "cifar10_resnet34", "densenet": "cifar10_densenet121"}
#: CIFAR keys are ours already (accuracy in %)
CIFAR_METRICS = {"train_acc": "train_acc", "test_acc": "test_acc"}
#: the LSTM keys hold perplexities; the train one is the last logging interval's, so it has its own name
LSTM_METRICS = {"train_loss": "train_ppl_last_interval", "test_loss": "test_ppl"}
COLUMNS = ["task", "optimizer", "epoch", "metric", "value", "source"]

_CIFAR_NAME = re.compile(r"^(?P<model>[a-z]+)-(?P<optimizer>[a-z]+)-")
_LSTM_NAME = re.compile(r"-optimizer-(?P<optimizer>[a-z]+)-nlayers(?P<layers>\d+)-")


def read_curve_file(path: Path) -> dict[str, list[float]]:
    """One curve file: {key: per-epoch floats}. ``weights_only=True`` refuses anything but plain data."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: not a dict of per-epoch lists ({type(data).__name__})")
    return {str(k): [float(x) for x in v] for k, v in data.items()}


def _identify(rel: str) -> tuple[str, str, dict[str, str]] | None:
    """(task, optimizer, key map) of a curve file from its path in the repo; None for other files."""
    folder, name = rel.rsplit("/", 1)
    if folder == CIFAR_DIR:
        m = _CIFAR_NAME.match(name)
        if m and m["model"] in CIFAR_MODELS:
            return CIFAR_MODELS[m["model"]], m["optimizer"], CIFAR_METRICS
    elif folder == LSTM_DIR:
        m = _LSTM_NAME.search(name)
        if m and name.startswith("PTB."):
            return f"ptb_lstm{m['layers']}", m["optimizer"], LSTM_METRICS
    return None


def build_rows(ref: Path, commit: str) -> list[tuple[str, str, int, str, float, str]]:
    """Every curve of the checkout ``ref`` as rows; epoch n = the value after n epochs (the reference
    appends one value per finished epoch). Sorted by task, optimizer, metric, epoch."""
    rows = []
    for folder in (CIFAR_DIR, LSTM_DIR):
        base = Path(ref) / folder
        if not base.is_dir():
            raise FileNotFoundError(f"{base} is not a folder: is {ref} a checkout of {REFERENCE_REPO}?")
        for path in sorted(base.iterdir()):
            rel = f"{folder}/{path.name}"
            found = _identify(rel)
            if found is None or not path.is_file():
                continue
            task, optimizer, keys = found
            source = f"{REFERENCE_REPO}@{commit}:{rel}"
            for key, values in read_curve_file(path).items():
                if key not in keys:
                    continue
                rows += [(task, optimizer, i + 1, keys[key], v, source) for i, v in enumerate(values)]
    rows.sort(key=lambda r: (r[0], r[1], r[3], r[2]))
    return rows


def csv_text(rows: list[tuple[str, str, int, str, float, str]]) -> str:
    """The CSV's exact text: header, then one line per row, floats as ``repr`` (round-trip exact)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for task, optimizer, epoch, metric, value, source in rows:
        writer.writerow([task, optimizer, epoch, metric, repr(float(value)), source])
    return out.getvalue()


def encode(text: str, gz: bool) -> bytes:
    """The file's bytes: UTF-8, gzipped when ``gz`` with no name and time stamp 0 (so the bytes depend
    on the text alone, for one zlib; the text is what is reproduced exactly)."""
    data = text.encode("utf-8")
    if not gz:
        return data
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as f:
        f.write(data)
    return out.getvalue()


def write_csv(ref: Path, commit: str, out: Path) -> int:
    """Rebuild the published-curves CSV (gzipped when ``out`` ends in .gz) from a checkout; returns the
    number of rows."""
    rows = build_rows(ref, commit)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(encode(csv_text(rows), str(out).endswith(".gz")))
    return len(rows)


def load_published_curves(path: Path | None) -> pd.DataFrame:
    """The CSV as a frame (empty with the columns when there is none)."""
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(path, compression="infer", dtype={"task": str, "optimizer": str, "metric": str, "source": str})
    frame["epoch"] = frame.epoch.astype(int)
    frame["value"] = frame.value.astype(float)
    return frame[COLUMNS]


# ------------------------------------------------------------------------------------- overlay
def overlay_figures(data, published: pd.DataFrame, metrics: dict[str, str], out_dir: Path) -> dict[str, Path]:
    """Per task with runs and published curves of metric ``metrics[task]``: the published curve of each
    optimizer we ran (dashed) beside our mean over seeds (solid, min-max band), both against epochs."""
    from optrepro.analysis.figures import _color, _maybe_log_y, plt, save
    from optrepro.analysis.tables import main_setting, safe_name
    from optrepro.status import RunStatus

    paths: dict[str, Path] = {}
    if published.empty or data.curves.empty:
        return paths
    for task, frame in data.runs.groupby("task", sort=True):
        task = str(task)
        metric = metrics.get(task)
        pub = published[(published.task == task) & (published.metric == metric)]
        if metric is None or pub.empty:
            continue
        done = frame[frame.status != RunStatus.FAILED]
        fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
        drawn = []
        for i, (optimizer, sub) in enumerate(done.groupby("optimizer", sort=True)):
            name = str(optimizer)
            runs = sub[sub.setting == main_setting(sub)].run.tolist()
            ours = data.curves[data.curves.run.isin(runs) & (data.curves.key == metric)]
            theirs = pub[pub.optimizer == name].sort_values("epoch")
            if ours.empty and theirs.empty:
                continue
            if not ours.empty:
                agg = ours.groupby("epoch").value.agg(["mean", "min", "max"]).sort_index()
                ax.plot(agg.index, agg["mean"], color=_color(i), label=f"{name}: ours (n={len(runs)})")
                ax.fill_between(agg.index, agg["min"], agg["max"], color=_color(i), alpha=0.15, lw=0)
                drawn.append(agg["mean"].to_numpy(float))
            if not theirs.empty:
                ax.plot(theirs.epoch, theirs.value, color=_color(i), ls="--", lw=1, label=f"{name}: published")
                drawn.append(theirs.value.to_numpy(float))
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (ours: mean, band min–max over seeds)")
        _maybe_log_y(ax, np.concatenate(drawn), str(frame["mode"].iloc[0]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{task}: our curves beside the AdaBelief repo's (dashed)")
        paths[task] = save(fig, out_dir, f"published_overlay_{safe_name(task)}")
    return paths
