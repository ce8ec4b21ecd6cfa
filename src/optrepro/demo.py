"""``make demo``: the whole pipeline at CPU scale on data that needs no download.

Runs the optimizers of the debate — SGD, Adam, AdamW, EAdam, AdaBelief and the four corners of the
belief x eps-placement ablation — on every demo task (toy 2-D functions, scikit-learn's digits, a
word-level LSTM on Python's own documentation, a ring-of-Gaussians GAN, a synthetic translation
task), several eps values and 3 seeds, then writes the analysis (REPORT.md, tables, figures) into
``results/demo/``. About 24 minutes on a 2-core CPU (174 runs); a second run only redoes what is missing.
The sweeps of tasks that batch (toy 2-D, digits, ring GAN) train as populations (``hydra/launcher=population``).
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


def demo_plan() -> list[Sweep]:
    """The demo's grid, task by task (only tasks whose config exists).

    Every optimizer on the cheap tasks; on the three slower ones AdaBelief and the four ablation corners only
    (``ablation_adam`` computes exactly what Adam does and ``ablation_eadam`` what EAdam does, at their defaults).
    """
    tasks = set(group_options("task"))
    plan = [
        # deterministic: one seed; every Figure-3 function
        Sweep("toy2d", ("task=toy2d", "task.function=l1,l1_rotated,quadratic_rotated,beale,rosenbrock",
                        f"optimizer={OPTIMIZERS}", "seed=0")),
        Sweep("toy2d_l1_scaled", ("task=toy2d_l1_scaled", f"optimizer={OPTIMIZERS}", "seed=0")),
        Sweep("digits", ("task=digits_cnn", f"optimizer={OPTIMIZERS}", f"seed={SEEDS}")),
        # the eps axis: the four corners at two more eps values (1e-8 is in the line above)
        Sweep("digits-eps", ("task=digits_cnn", f"optimizer={CORNERS}", "optimizer.eps=1e-16,1e-4", f"seed={SEEDS}")),
        # placement at a matched floor: the outside corners at ε = √(ε_inside/(1−β2)) for each inside ε above
        Sweep("digits-matched", ("task=digits_cnn", f"optimizer={OUTSIDE}", f"seed={SEEDS}",
                                 f"optimizer.eps={matched_outside_eps('digits_cnn', (1e-16, 1e-8, 1e-4))}")),
        Sweep("textlm", ("task=textlm_lstm1", f"optimizer=adabelief,{CORNERS}", f"seed={SEEDS}")),
        Sweep("textlm-matched", ("task=textlm_lstm1", f"optimizer={OUTSIDE}",
                                 f"optimizer.eps={matched_outside_eps('textlm_lstm1')}", f"seed={SEEDS}")),
        Sweep("ring_gan", ("task=ring_gan", f"optimizer=adabelief,{CORNERS}", f"seed={SEEDS}")),
        Sweep("synthetic_mt", ("task=synthetic_mt", f"optimizer=adabelief,{CORNERS}", f"seed={SEEDS}")),
    ]
    return [s for s in plan if s.overrides[0].split("=", 1)[1] in tasks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/demo", help="analysis output (runs go to <out>/runs)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs (default 2: one per core here)")
    parser.add_argument("--only", default=None, help="comma-separated sweep labels to run (default: all)")
    parser.add_argument("--populations", action=argparse.BooleanOptionalAction, default=True,
                        help="train the sweeps of tasks that batch as populations (hydra/launcher=population); "
                             "the other sweeps use --jobs processes (default on)")
    args = parser.parse_args(argv)

    sweeps = demo_plan()
    if args.only:
        wanted = set(args.only.split(","))
        sweeps = [s for s in sweeps if s.label in wanted]
    out = Path(args.out)
    print(f"demo: {sum(s.n_runs() for s in sweeps)} runs in {len(sweeps)} sweeps -> {out / 'runs'}", flush=True)
    started = time.time()
    failures = run_sweeps(sweeps, out / "runs", jobs=args.jobs, populations=args.populations,
                           extra=("profile=demo", "wandb.mode=disabled", "diagnostics.enabled=true"))
    code = analyze(out / "runs", out)
    minutes = (time.time() - started) / 60
    print(f"demo finished in {minutes:.1f} min; report: {out / 'REPORT.md'}", flush=True)
    sys.exit(1 if failures or code else 0)


if __name__ == "__main__":
    main()
