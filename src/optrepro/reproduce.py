"""``make reproduce-table TABLE=<name>``: a published table's sweep at paper scale, then its analysis.

Prints the plan first (runs, and device-hours estimated from a measured step time, or why a task could
not be timed), stops there with ``--dry-run`` (``--list``: every table in one line each), otherwise runs
the sweeps with the chosen launcher (finished runs are skipped, interrupted ones resume) into
``<results>/runs/`` and writes the analysis into ``<results>/<TABLE>/``. Extra arguments are Hydra
overrides given to every run (``task.data.root=/datasets``, ``hydra.launcher.account=...``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optrepro.errors import UserError
from optrepro.pipeline import (
    LAUNCHERS,
    Sweep,
    analyze,
    launcher_overrides,
    matched_outside_eps,
    measure_step_seconds,
    preset_grid,
    run_sweeps,
)

#: table name -> (one-line description, experiment presets (configs/experiment/) whose grids make it up)
TABLES: dict[str, tuple[str, list[str]]] = {
    "eadam_table2": ("EAdam Table 2: CIFAR-10/100 x VGG-11, ResNet-18, DenseNet-121; Adam, RAdam, AdaBelief, EAdam",
                     ["eadam_table2"]),
    "eadam_table3": ("EAdam Table 3: Penn Treebank perplexity, 1-3 layer AWD-LSTMs", ["eadam_table3"]),
    "eadam_table4": ("EAdam Table 4: Faster R-CNN + FPN on PASCAL VOC, mAP", ["eadam_table4"]),
    "adabelief_cifar": ("AdaBelief Figure 4: CIFAR-10/100 x ResNet-34, VGG-11, DenseNet-121, nine optimizers",
                        ["adabelief_cifar"]),
    "adabelief_imagenet": ("AdaBelief Table 2: ResNet-18 on ImageNet, 90 epochs", ["adabelief_imagenet"]),
    "adabelief_gan": ("AdaBelief WGAN and WGAN-GP on CIFAR-10, FID", ["adabelief_gan"]),
    "adabelief_sngan": ("AdaBelief Table 3: SN-GAN on CIFAR-10, FID", ["adabelief_sngan"]),
    "adabelief_transformer": ("AdaBelief Table 1: Transformer on IWSLT14 de-en, BLEU", ["adabelief_transformer"]),
    "transformer_scale": ("GPT-2-style pretraining on FineWeb-Edu: 4 sizes x the 2x2 corners x 8 eps, plus the "
                          "outside corners at every eps's matched floor", ["transformer_scale"]),
    "finetune_glue": ("Fine-tuning RoBERTa-base on GLUE RTE, MRPC, CoLA, STS-B, SST-2: Adam-family presets, the 2x2 "
                      "corners, an eps sweep with the matched floor; >= 5 seeds", ["finetune_glue"]),
    "finetune_vision": ("Fine-tuning pretrained ViT-B/16 and ResNet-50 on CIFAR-10 (the ViT fine-tuning recipe): SGD, "
                        "Adam-family presets, the 2x2 corners; 5 seeds (not timed without cached weights)",
                        ["finetune_vision"]),
}
#: the pretraining task of transformer_scale and its sizes (configs/task/model/), one sweep per size
LM_TASK = "lm_pretrain_fineweb"
ABLATION_DESCRIPTION = "the 2x2 belief x eps-placement ablation on every paper task, plus the matched-floor pairs"
#: the 2x2 ablation (README, "Optimizers") on every paper task
ABLATION_TASKS = ("cifar10_resnet34", "cifar100_resnet34", "cifar10_vgg11", "cifar10_densenet121",
                  "ptb_lstm1", "ptb_lstm2", "ptb_lstm3", "cifar10_wgangp", "cifar10_sngan",
                  "iwslt14_transformer", "voc_fasterrcnn", "imagenet_resnet18")
ABLATION_CORNERS = "ablation_adam,ablation_eadam,ablation_belief_outside,ablation_belief_inside"


#: the fine-tuning table: its tasks, the fewest seeds it runs, the nominal eps of its sweep (beside the recipe's 1e-6)
FINETUNE_TASKS = ("glue_rte", "glue_mrpc", "glue_cola", "glue_stsb", "glue_sst2")
FINETUNE_MIN_SEEDS = 5
FINETUNE_EPS = (1e-8, 1e-7)


def at_least_seeds(seeds: str, n: int) -> str:
    """``seeds`` extended by the next unused integers to ``n`` seeds (small GLUE tasks vary strongly with the
    seed, so the fine-tuning table never runs fewer than 5); more seeds than ``n`` are kept as given."""
    chosen = [int(s) for s in seeds.split(",") if s.strip()]
    candidate = 0
    while len(chosen) < n:
        if candidate not in chosen:
            chosen.append(candidate)
        candidate += 1
    return ",".join(str(s) for s in chosen)


def finetune_plan(seeds: str) -> list[Sweep]:
    """experiment=finetune_glue (tasks x presets and corners), then per task the eps sweep: the four corners at
    each of FINETUNE_EPS, and the outside corners at the inside corners' floors sqrt(eps / (1 - beta2)) for those
    eps and the recipe's (the placement-at-a-matched-floor pairs)."""
    seeds = at_least_seeds(seeds, FINETUNE_MIN_SEEDS)
    sweeps = [Sweep("finetune_glue", ("experiment=finetune_glue", f"seed={seeds}"), preset_grid("finetune_glue"))]
    eps = ",".join(repr(e) for e in FINETUNE_EPS)
    for t in FINETUNE_TASKS:
        recipe_eps = float(compose_optimizer_eps(t))
        matched = matched_outside_eps(t, [*FINETUNE_EPS, recipe_eps])
        sweeps.append(Sweep(f"eps-{t}", (f"task={t}", f"optimizer={ABLATION_CORNERS}", f"optimizer.eps={eps}",
                                         f"seed={seeds}", "diagnostics.enabled=true")))
        sweeps.append(Sweep(f"matched-{t}", (f"task={t}", "optimizer=ablation_adam,ablation_belief_outside",
                                             f"optimizer.eps={matched}", f"seed={seeds}", "diagnostics.enabled=true")))
    return sweeps


def compose_optimizer_eps(task: str) -> float:
    """The eps the corners run at under the task's recipe (the matched floor's inside eps)."""
    from optrepro.config import compose_train

    return float(compose_train([f"task={task}", "optimizer=ablation_eadam"]).optimizer.eps)


def plan(table: str, seeds: str) -> list[Sweep]:
    from optrepro.config import group_options

    if table == "all":
        return [s for name in [*TABLES, "ablation"] for s in plan(name, seeds)]
    if table == "finetune_glue":
        return finetune_plan(seeds)
    if table == "finetune_vision":  # fine-tuning varies with the seed: never fewer than 5, as finetune_glue
        seeds = at_least_seeds(seeds, FINETUNE_MIN_SEEDS)
    if table == "ablation":
        tasks = [t for t in ABLATION_TASKS if t in group_options("task")]
        # the corners at the task's ε, and the outside corners at its inside floor (placement at a matched floor)
        outside = "optimizer=ablation_adam,ablation_belief_outside"
        sweeps = []
        for t in tasks:
            matched = f"optimizer.eps={matched_outside_eps(t)}"
            sweeps.append(Sweep(f"ablation-{t}", (f"task={t}", f"optimizer={ABLATION_CORNERS}", f"seed={seeds}",
                                                  "diagnostics.enabled=true")))
            sweeps.append(Sweep(f"matched-{t}", (f"task={t}", outside, matched, f"seed={seeds}",
                                                 "diagnostics.enabled=true")))
        return sweeps
    if table == "transformer_scale":
        return lm_plan(seeds)
    if table not in TABLES:
        raise UserError(f"unknown TABLE '{table}'; choose one of: {', '.join([*TABLES, 'ablation', 'all'])} "
                        f"(make reproduce-table LIST=1 lists them)")
    sweeps = []
    for experiment in TABLES[table][1]:
        if experiment not in group_options("experiment"):
            raise UserError(f"experiment preset '{experiment}' is not in configs/experiment/ yet")
        sweeps.append(Sweep(experiment, (f"experiment={experiment}", f"seed={seeds}"), preset_grid(experiment)))
    return sweeps


def lm_plan(seeds: str) -> list[Sweep]:
    """transformer_scale, one sweep per model size (each timed at its own size), and per size the outside
    corners at the matched floor sqrt(eps / (1 - b2)) of every swept eps (those not in the grid already)."""
    grid = preset_grid("transformer_scale")
    sizes = grid["task/model"].split(",")
    rest = {k: v for k, v in grid.items() if k != "task/model"}
    swept = [float(e) for e in rest["optimizer.eps"].split(",")]
    floors = [f for f in map(float, matched_outside_eps(LM_TASK, [e for e in swept if e <= 1e-4]).split(","))
              if not any(math.isclose(f, e, rel_tol=1e-9) for e in swept)]
    sweeps = []
    for size in sizes:
        base = ("experiment=transformer_scale", f"task/model={size}")
        sweeps.append(Sweep(f"transformer_scale-{size}", (*base, f"seed={seeds}"), rest))
        sweeps.append(Sweep(f"matched-{size}", (*base, "optimizer=ablation_adam,ablation_belief_outside",
                                                 f"optimizer.eps={','.join(map(repr, floors))}", f"seed={seeds}"),
                            rest))
    return sweeps


def chosen_task(sweep: Sweep) -> str:
    """The task a sweep trains when neither its command line nor its preset grid names one (an experiment
    preset that selects it in its defaults, e.g. eadam_table4's voc_fasterrcnn)."""
    from optrepro.config import compose_train, parse_overrides

    fixed = [str(o.input_line) for o in parse_overrides(list(sweep.overrides)) if not o.is_sweep_override()]
    return str(compose_train(fixed, return_hydra_config=True).hydra.runtime.choices.task)


def runs_per_task(sweep: Sweep) -> dict[str, int]:
    """How many of a sweep's runs train each task (a task at one model size, ``task/model``, counts apart:
    ``lm_pretrain_fineweb[gpt_124m]``)."""
    tasks = [t for t in sweep.values("task") if t] or [chosen_task(sweep)]
    models = sweep.values("task/model")
    if len(models) == 1:
        tasks = [f"{t}[{models[0]}]" for t in tasks]
    n = sweep.n_runs()
    return {t: n // max(len(tasks), 1) for t in tasks}


def measure(task: str, overrides: Sequence[str]) -> tuple[float, int] | str:
    """``measure_step_seconds`` of a task, or of a task at one model size (``name[size]``): a pretraining size
    is timed on random tokens of the GPT-2 vocabulary (the step time does not depend on the text) in bf16 as
    transformer_scale runs it, on a GPU only -- on a CPU the plan says the compute per run instead
    (6 x parameters x tokens)."""
    if not task.endswith("]"):
        return measure_step_seconds(task, overrides=overrides)
    name, size = task[:-1].split("[")
    from optrepro.config import resolve_device

    gpu = resolve_device("auto").type == "cuda"
    if not gpu and size != "gpt_tiny":
        return f"a GPU preset, timed on a GPU only; {lm_pflop(name, size):.0f} PFLOP per run (6 x params x tokens)"
    root = lm_timing_shards()
    precision = "bf16" if gpu else "fp32"
    return measure_step_seconds(name, overrides=[*overrides, f"task/model={size}", f"precision={precision}",
                                                 f"task.data.root={root}", "task.data.name=shards",
                                                 "task.data.prefix=timing", "task.data.n_vocab=50257",
                                                 "task.data.eval_tokens=2048", "task.data.train_tokens=null"])


def lm_pflop(task: str, size: str) -> float:
    """6 N D of one run: N parameters (the decoder built on the meta device), D = steps x batch x accumulation
    x seq_len."""
    import torch

    from optrepro.config import compose_train
    from optrepro.models.gpt import GPT, GPTConfig

    cfg = compose_train([f"task={task}", f"task/model={size}"]).task
    m = cfg.model
    vocab = -(-int(cfg.data.get("n_vocab") or 50257) // int(m.vocab_multiple)) * int(m.vocab_multiple)
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab, int(m.block_size), int(m.n_layer), int(m.n_head), int(m.n_embd)))
    tokens = int(cfg.steps) * int(cfg.batch_size) * int(cfg.grad_accum_steps) * int(cfg.seq_len)
    return 6 * model.num_parameters() * tokens / 1e15


_TIMING_SHARDS: list[Path] = []


def lm_timing_shards() -> Path:
    """A folder of random GPT-2-vocabulary shards, enough for a timed pretraining step of the largest batch."""
    import tempfile

    import numpy as np

    from optrepro.data.token_shards import write_shard

    if not _TIMING_SHARDS:
        root = Path(tempfile.mkdtemp(prefix="optrepro_lm_timing_"))
        gen = np.random.default_rng(0)
        write_shard(root / "timing_train_000000.bin", gen.integers(0, 50257, 16 * 32 * 1024 + 1, dtype=np.uint16))
        write_shard(root / "timing_val_000000.bin", gen.integers(0, 50257, 4096, dtype=np.uint16))
        _TIMING_SHARDS.append(root)
    return _TIMING_SHARDS[0]


@dataclass
class Estimate:
    """Device-hours of a plan from the tasks that could be timed; the others are counted, not guessed."""

    lines: list[str]  # one per task
    hours: float  # timed tasks only
    timed: int
    untimed: dict[str, str]  # task -> why it could not be timed

    def total_line(self) -> str:
        if not self.timed:
            return f"  estimated total: none (no task could be timed; {len(self.untimed)} not timed)"
        rest = f"; {len(self.untimed)} more not timed, not counted" if self.untimed else ""
        return f"  estimated total: {self.hours:.1f} device-hours on this machine for {self.timed} timed tasks{rest}"


def estimate_hours(sweeps: Sequence[Sweep], overrides: Sequence[str] = (),
                   measured: dict[str, tuple[float, int] | str] | None = None) -> Estimate:
    """Measured seconds/step on this machine x steps x runs, per task. ``measured`` caches across calls."""
    measured = {} if measured is None else measured
    counts: dict[str, int] = {}
    for sweep in sweeps:
        for task, n in runs_per_task(sweep).items():
            counts[task] = counts.get(task, 0) + n
    estimate = Estimate([], 0.0, 0, {})
    for task, n in counts.items():
        if task not in measured:
            measured[task] = measure(task, overrides)
        timing = measured[task]
        if isinstance(timing, str):
            estimate.untimed[task] = timing
            estimate.lines.append(f"  {task:<24} {n:>4} runs   not timed: {timing}")
            continue
        seconds, steps = timing
        hours = seconds * steps * n / 3600
        estimate.hours += hours
        estimate.timed += 1
        estimate.lines.append(f"  {task:<24} {n:>4} runs x {steps} steps x {seconds * 1000:.1f} ms/step "
                              f"= {hours:.1f} h")
    return estimate


def list_tables(seeds: str, overrides: Sequence[str] = ()) -> list[str]:
    """One line per table: name, runs, estimated device-hours (or why not), description."""
    measured: dict[str, tuple[float, int] | str] = {}
    lines = []
    for name, description in [*((n, d) for n, (d, _) in TABLES.items()), ("ablation", ABLATION_DESCRIPTION)]:
        sweeps = plan(name, seeds)
        est = estimate_hours(sweeps, overrides, measured)
        if not est.timed:
            first = next(iter(est.untimed.values()), "no task")
            hours = f"not timed: {first}"
        else:
            hours = f"{est.hours:.1f} device-hours" + (f" ({len(est.untimed)} tasks not timed)" if est.untimed else "")
        lines.append(f"{name:<22} {sum(s.n_runs() for s in sweeps):>5} runs  {description}; {hours}")
    lines.append(f"{'all':<22} every table above (seeds {seeds})")
    return lines


def check_overrides(overrides: Sequence[str]) -> None:
    """The results folder and the launcher have their own options; a second way to set them would split a
    table between two folders or launch it twice."""
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "results_dir":
            raise UserError(f"'{o}': the results folder is --results (make: RESULTS=<folder>); "
                            f"runs go to <folder>/runs and the analysis to <folder>/<TABLE>")
        if key == "hydra/launcher":
            raise UserError(f"'{o}': choose the launcher with --launcher (make: LAUNCHER=...), one of "
                            f"{', '.join(LAUNCHERS)}")


def execute(sweeps: Sequence[Sweep], results: Path, table: str, launcher: str = "auto", jobs: int = 1,
            launch: Sequence[str] | None = None, overrides: Sequence[str] = ()) -> int:
    """Run the sweeps into ``<results>/runs`` with the launcher, then the analysis into ``<results>/<table>``.
    Returns the exit status (1 if a sweep or the analysis failed)."""
    started = time.time()
    failures = run_sweeps(sweeps, results / "runs", jobs=jobs, extra=overrides, launcher=launch,
                          populations=launcher == "population")
    out = results / table
    code = analyze(results / "runs", out)
    print(f"done in {(time.time() - started) / 3600:.2f} h; report: {out / 'REPORT.md'}")
    return 1 if failures or code else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="all")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--results", default="results",
                        help="results folder: runs go to <results>/runs, the analysis to <results>/<TABLE>")
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS,
                        help="auto: joblib with --jobs processes (basic for 1); population; basic; joblib; "
                             "local: submitit on this machine; slurm: submitit on SLURM (one array job per sweep)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel jobs of the auto and joblib launchers")
    parser.add_argument("--partition", default=None, help="SLURM partition (--launcher slurm)")
    parser.add_argument("--gpus-per-job", type=int, default=None, help="GPUs of each job (slurm, local)")
    parser.add_argument("--time-limit", type=int, default=None, metavar="MINUTES",
                        help="time limit of each job in minutes (slurm, local); slurm requeues a job that reaches it")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--list", action="store_true", help="list the tables (runs, device-hours) and stop")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. hydra.launcher.account=X")
    args = parser.parse_args(argv)
    try:
        check_overrides(args.overrides)
        launch = launcher_overrides(args.launcher, args.jobs, args.partition, args.gpus_per_job, args.time_limit)
        if args.list:
            print(f"tables (seeds {args.seeds}; device-hours from a few Adam steps per task timed here):")
            for line in list_tables(args.seeds, args.overrides):
                print(f"  {line}")
            return
        sweeps = plan(args.table, args.seeds)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    results = Path(args.results)
    total = 0
    print(f"plan for TABLE={args.table} (seeds {args.seeds}):")
    for sweep in sweeps:
        n = sweep.n_runs()
        total += n
        grid = " ".join(sweep.overrides) + (f"  [preset grid: {sweep.preset_grid}]" if sweep.preset_grid else "")
        print(f"  {sweep.label:<28} {n:>5} runs   {grid}")
    print(f"  total: {total} runs; runs already finished under {results / 'runs'} are skipped")
    shown = " ".join(launch) if launch is not None else f"{args.launcher} (per sweep)"
    print(f"  launcher: {shown}" + (f"; every run also gets: {' '.join(args.overrides)}" if args.overrides else ""))
    print("time, measured here with a few Adam steps per task (never downloading):")
    estimate = estimate_hours(sweeps, args.overrides)
    for line in [*estimate.lines, estimate.total_line()]:
        print(line)
    if args.dry_run:
        return
    sys.exit(execute(sweeps, results, args.table, args.launcher, args.jobs, launch, args.overrides))


if __name__ == "__main__":
    main()
