"""GLUE tasks (RTE, MRPC, CoLA, STS-B, SST-2): from the HF hub, or from the original GLUE TSV files.

Two sources, the same three columns out (``text_a``, ``text_b`` or None, ``label``) and the same label
numbering as the hub's ``nyu-mll/glue`` (RTE: 0 entailment / 1 not_entailment; MRPC: 1 equivalent;
CoLA: 1 acceptable; SST-2: 1 positive; STS-B: a float score in [0, 5]):

* ``source: hub``: ``datasets.load_dataset("nyu-mll/glue", <config>)`` (downloads once into the HF cache;
  ``download: false`` reads the cache only);
* ``source: tsv``: ``<root>/<TASK>/{train,dev}.tsv`` as GLUE's own download script writes them, read with
  ``datasets.load_dataset("csv", delimiter="\\t")``. Their layouts differ per task (:data:`TSV`): CoLA has
  no header row; MRPC's label is the first column (``Quality``); STS-B has ten columns, the sentences in the
  8th and 9th and the score last; RTE's label is a word. Quotes are literal text in GLUE (QUOTE_NONE).

GLUE's test labels are not public, so the dev split is what every task reports, as RoBERTa and ``run_glue`` do.
:func:`write_glue_tsv` writes files in those layouts (tests, and the synthetic CPU task).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optrepro.errors import DataMissingError, UserError

TASKS = ("rte", "mrpc", "cola", "stsb", "sst2")
SOURCES = ("hub", "tsv")
HUB_DATASET = "nyu-mll/glue"
SPLITS = {"train": "train", "dev": "validation"}  # our name -> the hub's


@dataclass(frozen=True)
class TsvLayout:
    """Where one GLUE task's TSV keeps its fields."""

    folder: str  # GLUE's folder name
    columns: tuple[str, ...]  # every column, in file order
    header: bool
    text_a: str
    text_b: str | None
    label: str
    label_map: dict[str, int] | None  # label text -> id; None: an integer or float column as it is

    @property
    def regression(self) -> bool:
        return self.label_map is None and self.label == "score"


TSV: dict[str, TsvLayout] = {
    "rte": TsvLayout("RTE", ("index", "sentence1", "sentence2", "label"), True, "sentence1", "sentence2", "label",
                     {"entailment": 0, "not_entailment": 1}),
    "mrpc": TsvLayout("MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), True, "#1 String",
                      "#2 String", "Quality", None),
    "cola": TsvLayout("CoLA", ("source", "label", "original_label", "sentence"), False, "sentence", None, "label",
                      None),
    "stsb": TsvLayout("STS-B", ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                                "sentence1", "sentence2", "score"), True, "sentence1", "sentence2", "score", None),
    "sst2": TsvLayout("SST-2", ("sentence", "label"), True, "sentence", None, "label", None),
}
#: the hub's column names per task
HUB_COLUMNS = {"rte": ("sentence1", "sentence2"), "mrpc": ("sentence1", "sentence2"), "cola": ("sentence", None),
               "stsb": ("sentence1", "sentence2"), "sst2": ("sentence", None)}


def num_labels(task: str) -> int:
    """Outputs of the classifier head: 1 for STS-B (regression), 2 for the others."""
    return 1 if task == "stsb" else 2


@dataclass
class GlueSplit:
    """One split as plain lists (what the task tokenizes once)."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list[float]
    files: list[Path]


def tsv_path(root: Path | str, task: str, split: str) -> Path:
    return Path(root) / TSV[task].folder / f"{split}.tsv"


def load_split(task: str, split: str, source: str, root: Path | str | None = None, download: bool = True,
               cache_dir: str | None = None) -> GlueSplit:
    """The ``train`` or ``dev`` split of a GLUE task from the hub or from GLUE TSV files under ``root``."""
    if task not in TASKS:
        raise UserError(f"unknown GLUE task {task!r}; choose one of: {', '.join(TASKS)}")
    if source == "tsv":
        return _load_tsv(task, split, Path(root or "."))
    return _load_hub(task, split, download, cache_dir)


def _load_tsv(task: str, split: str, root: Path) -> GlueSplit:
    import datasets

    layout, path = TSV[task], tsv_path(root, task, split)
    if not path.is_file():
        raise DataMissingError(f"{path} not found: GLUE's {layout.folder}/{split}.tsv under task.data.root={root} "
                               f"(or task.data.source=hub to read {HUB_DATASET})")
    ds = datasets.load_dataset(
        "csv", data_files={split: str(path)}, split=split, delimiter="\t", quoting=csv.QUOTE_NONE,
        header=0 if layout.header else None, column_names=list(layout.columns), keep_in_memory=True,
        features=datasets.Features({c: datasets.Value("string") for c in layout.columns}), keep_default_na=False,
    )
    a = [str(x) for x in ds[layout.text_a]]
    b = [str(x) for x in ds[layout.text_b]] if layout.text_b else None
    raw = ds[layout.label]
    try:
        if layout.label_map is not None:
            labels = [float(layout.label_map[str(x)]) for x in raw]
        else:
            labels = [float(x) for x in raw]
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: label {exc} in column {layout.label!r} is not a {task} label") from None
    return GlueSplit(a, b, labels, [path])


def _load_hub(task: str, split: str, download: bool, cache_dir: str | None) -> GlueSplit:
    import datasets

    offline = datasets.config.HF_HUB_OFFLINE
    try:
        datasets.config.HF_HUB_OFFLINE = offline or not download  # download=false: the local cache only
        ds = datasets.load_dataset(HUB_DATASET, task, split=SPLITS[split], cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError, ValueError, OSError) as exc:
        how = "task.data.download=true" if not download else "a network connection"
        raise DataMissingError(f"GLUE {task} ({HUB_DATASET}) is not in the HF cache and could not be read "
                               f"({type(exc).__name__}); it needs {how}, or task.data.source=tsv with the "
                               f"GLUE files") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
    col_a, col_b = HUB_COLUMNS[task]
    return GlueSplit(list(ds[col_a]), list(ds[col_b]) if col_b else None, [float(x) for x in ds["label"]], [])


def write_glue_tsv(root: Path | str, task: str, split: str, text_a: Sequence[str], labels: Sequence[Any],
                   text_b: Sequence[str] | None = None) -> Path:
    """A file in GLUE's own layout for ``task`` (labels as GLUE writes them: RTE's words, STS-B's floats)."""
    layout = TSV[task]
    path = tsv_path(root, task, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    inverse = {v: k for k, v in (layout.label_map or {}).items()}
    lines = ["\t".join(layout.columns)] if layout.header else []
    for i, (a, y) in enumerate(zip(text_a, labels, strict=True)):
        fields = dict.fromkeys(layout.columns, "x")
        fields.update({"index": str(i), layout.text_a: a, layout.label: str(inverse.get(int(y), y))
                       if layout.label_map else str(y)})
        if layout.text_b and text_b is not None:
            fields[layout.text_b] = text_b[i]
        if task == "cola":
            fields.update(source="gj04", original_label="" if int(y) else "*")
        lines.append("\t".join(fields[c] for c in layout.columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def prefetch(model: str, tasks: Sequence[str] = TASKS) -> None:
    """Download the GLUE tasks and the checkpoint into the HF caches once (a login node with network; runs on
    offline compute nodes then read the caches with task.data.download=false)."""
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for task in tasks:
        ds = datasets.load_dataset(HUB_DATASET, task)
        print(f"{HUB_DATASET} {task}: " + ", ".join(f"{k} {len(v):,}" for k, v in ds.items()))
    AutoTokenizer.from_pretrained(model)
    AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
    print(f"{model}: in the HF cache")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m optrepro.data.glue", description=prefetch.__doc__)
    parser.add_argument("--model", default="FacebookAI/roberta-base", help="hub name of the checkpoint")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated GLUE tasks")
    args = parser.parse_args(argv)
    prefetch(args.model, [t for t in args.tasks.split(",") if t])


if __name__ == "__main__":
    main()

__all__ = ["HUB_DATASET", "SOURCES", "TASKS", "TSV", "GlueSplit", "load_split", "num_labels", "write_glue_tsv"]
