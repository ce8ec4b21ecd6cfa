"""``make demo``: the whole pipeline at CPU scale on data that needs no download, in under 10 minutes.

Runs the optimizers of the debate — SGD, Adam, AdamW, EAdam, AdaBelief and the four corners of the
belief x eps-placement ablation — on every demo task (toy 2-D functions, scikit-learn's digits, a
word-level LSTM on Python's own documentation, a ring-of-Gaussians GAN, a synthetic translation
task), several eps values and 3 seeds, then writes the analysis (REPORT.md, tables, figures) into
``results/demo/``. Two plans:

* the default (``make demo``): 147 runs, each family's training shortened by ``profile=demo``
  (configs/profile/demo/), the ε sweep on digits at ε = 1e-8 and 1e-4, and the four corners alone on the
  three tasks that do not batch or batch slowly. 4.7 min on an idle 2-core CPU (4.2 min of runs,
  0.5 min of analysis; measured with `time make demo`).
* ``--full`` (``make demo-full``): the 174-run grid at the tasks' own training (``profile=demo_full``),
  the ε sweep also at 1e-16, AdaBelief at its own recipe on every task. About 24 minutes.

The sweeps of tasks that batch (toy 2-D, digits, ring GAN) train as populations
(``hydra/launcher=population``); a second run only redoes what is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from optrepro.config import group_options
from optrepro.pipeline import Sweep, analyze, matched_outside_eps, run_sweeps

CORNERS = "ablation_adam,ablation_eadam,ablation_belief_outside,ablation_belief_inside"
OPTIMIZERS = f"sgd,adam,adamw,eadam,adabelief,{CORNERS}"
SEEDS = "0,1,2"
#: the outside corners at the inside corners' floor √(ε/(1−β2)), for "placement at a matched floor"
OUTSIDE = "ablation_adam,ablation_belief_outside"
#: the profile each plan runs under (configs/profile/<name>.yaml and its per-family patches)
PROFILE = {False: "demo", True: "demo_full"}


def demo_plan(full: bool = False) -> list[Sweep]:
    """The demo's grid, task by task (only tasks whose config exists).

    Every optimizer on the cheap tasks (toy 2-D, digits). On the three slower ones the four ablation
    corners (``ablation_adam`` computes exactly what Adam does and ``ablation_eadam`` what EAdam does, at their
    defaults), and with ``full`` AdaBelief at its own recipe too. The digits ε axis: the corners at ε = 1e-4
    besides the default 1e-8 (``full``: and 1e-16), with the outside corners at each inside ε's floor.
    """
    tasks = set(group_options("task"))
    slow = f"adabelief,{CORNERS}" if full else CORNERS
    more_eps = "1e-16,1e-4" if full else "1e-4"
    inside_eps = (1e-16, 1e-8, 1e-4) if full else (1e-8, 1e-4)
    plan = [
        # deterministic: one seed; every Figure-3 function
        Sweep("toy2d", ("task=toy2d", "task.function=l1,l1_rotated,quadratic_rotated,beale,rosenbrock",
                        f"optimizer={OPTIMIZERS}", "seed=0")),
        Sweep("toy2d_l1_scaled", ("task=toy2d_l1_scaled", f"optimizer={OPTIMIZERS}", "seed=0")),
        Sweep("digits", ("task=digits_cnn", f"optimizer={OPTIMIZERS}", f"seed={SEEDS}")),
        # the eps axis: the four corners at more eps values (1e-8 is in the line above)
        Sweep("digits-eps", ("task=digits_cnn", f"optimizer={CORNERS}",
                             f"optimizer.eps={more_eps}", f"seed={SEEDS}")),
        # placement at a matched floor: the outside corners at ε = √(ε_inside/(1−β2)) for each inside ε above
        Sweep("digits-matched", ("task=digits_cnn", f"optimizer={OUTSIDE}", f"seed={SEEDS}",
                                 f"optimizer.eps={matched_outside_eps('digits_cnn', inside_eps)}")),
        Sweep("textlm", ("task=textlm_lstm1", f"optimizer={slow}", f"seed={SEEDS}")),
        Sweep("textlm-matched", ("task=textlm_lstm1", f"optimizer={OUTSIDE}",
                                 f"optimizer.eps={matched_outside_eps('textlm_lstm1')}", f"seed={SEEDS}")),
        Sweep("ring_gan", ("task=ring_gan", f"optimizer={slow}", f"seed={SEEDS}")),
        Sweep("synthetic_mt", ("task=synthetic_mt", f"optimizer={slow}", f"seed={SEEDS}")),
    ]
    return [s for s in plan if s.overrides[0].split("=", 1)[1] in tasks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="analysis output, runs go to <out>/runs (default results/demo; --full: results/demo_full)")
    parser.add_argument("--full", action="store_true",
                        help="the 174-run grid at the tasks' own training (profile=demo_full), about 24 min")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs (default 2: one per core here)")
    parser.add_argument("--only", default=None, help="comma-separated sweep labels to run (default: all)")
    parser.add_argument("--no-analysis", dest="analysis", action="store_false",
                        help="train only; skip the analysis (to time or add to a plan's runs)")
    parser.add_argument("--populations", action=argparse.BooleanOptionalAction, default=True,
                        help="train the sweeps of tasks that batch as populations (hydra/launcher=population); "
                             "the other sweeps use --jobs processes (default on)")
    args = parser.parse_args(argv)

    sweeps = demo_plan(args.full)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.label for s in sweeps}
        if unknown:
            parser.error(f"unknown sweep label(s) {', '.join(sorted(unknown))}; "
                         f"choose from: {', '.join(s.label for s in sweeps)}")
        sweeps = [s for s in sweeps if s.label in wanted]
    out = Path(args.out or ("results/demo_full" if args.full else "results/demo"))
    profile = PROFILE[args.full]
    print(f"demo ({profile}): {sum(s.n_runs() for s in sweeps)} runs in {len(sweeps)} sweeps -> {out / 'runs'}",
          flush=True)
    started = time.time()
    failures = run_sweeps(sweeps, out / "runs", jobs=args.jobs, populations=args.populations,
                           extra=(f"profile={profile}", "wandb.mode=disabled", "diagnostics.enabled=true"))
    trained = time.time()
    code = analyze(out / "runs", out) if args.analysis else 0
    done = time.time()
    print(f"demo finished in {(done - started) / 60:.1f} min ({(trained - started) / 60:.1f} min of runs, "
          f"{(done - trained) / 60:.1f} min of analysis); report: {out / 'REPORT.md'}", flush=True)
    sys.exit(1 if failures or code else 0)


if __name__ == "__main__":
    main()
