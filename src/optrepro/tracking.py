"""wandb logging that can never cost a run its local results.

One wandb run per optrepro run: project ``optrepro``, group = task, job_type = optimizer, a readable
name (optimizer, eps, seed), the flattened config plus the optimizer's factors (second-moment kind,
eps placement, effective floor) so the dashboard can group by any of them. The wandb run id is the
run folder's content hash, so a resumed run continues the same wandb run. Files go under
``<run folder>/wandb``; offline runs are uploaded later with ``make wandb-sync``. wandb says nothing
on the terminal (some 30 lines a run otherwise) unless ``wandb.verbose=true``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optrepro.runs import optimizer_label
from optrepro.status import RunStatus


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"eps": 1e-8}} -> {"optimizer.eps": 1e-8}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        elif isinstance(value, (list, tuple)):
            flat[dotted] = str(list(value))
        else:
            flat[dotted] = value
    return flat


def display_name(cfg: DictConfig) -> str:
    name = optimizer_label(cfg)
    eps = cfg.optimizer.get("eps")
    eps_part = f" eps={eps:g}" if isinstance(eps, (int, float)) else ""
    return f"{name}{eps_part} seed={cfg.seed}"


def settings(verbose: bool) -> Any:
    """wandb.init's settings: silent (no banner, history or sync hints on the terminal) unless verbose.
    Console capture into the run's output.log is unchanged either way."""
    import wandb

    return wandb.Settings() if verbose else wandb.Settings(silent=True)


class Tracker:
    """Thin, failure-proof wrapper over a wandb run (or nothing when wandb.mode=disabled)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str, factors: Mapping[str, Any]) -> None:
        self.run: Any = None
        mode = str(cfg.wandb.mode)
        if mode == "disabled":
            return
        try:
            import wandb  # optional here: the lent GPU machine's wheelhouse leaves it out
        except ImportError:
            warnings.warn(f"wandb is not installed, so wandb.mode={mode} logs nothing (pip install wandb, or "
                          "wandb.mode=disabled); local results are unaffected", stacklevel=2)
            return
        try:
            config = flatten(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
            config.update({f"factors.{k}": v for k, v in factors.items()})
            self.run = wandb.init(
                project=str(cfg.wandb.project),
                entity=cfg.wandb.get("entity"),
                group=str(cfg.task.name),
                job_type=optimizer_label(cfg),
                name=display_name(cfg),
                tags=list(cfg.wandb.get("tags") or []),
                id=run_id,
                resume="allow",
                reinit="create_new",  # population members: several runs open in one process
                dir=str(run_dir),
                config=config,
                mode=mode,
                settings=settings(bool(cfg.wandb.get("verbose", False))),
            )
        except Exception as exc:  # noqa: BLE001 - wandb trouble must not stop training
            self._give_up("init", exc)

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that logs nothing (data-parallel ranks other than 0)."""
        tracker = cls.__new__(cls)
        tracker.run = None
        return tracker

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
        except Exception as exc:  # noqa: BLE001
            self._give_up("log", exc)

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        try:
            for key, value in flatten(summary).items():
                if isinstance(value, (int, float, str)) or value is None:
                    self.run.summary[key] = value
            self.run.finish(exit_code=0 if summary.get("status") != RunStatus.FAILED else 1)
        except Exception as exc:  # noqa: BLE001
            self._give_up("finish", exc)
        self.run = None

    def _give_up(self, what: str, exc: BaseException) -> None:
        warnings.warn(f"wandb {what} failed ({type(exc).__name__}: {exc}); local results are unaffected",
                      stacklevel=3)
        if self.run is not None:
            with contextlib.suppress(Exception):
                self.run.finish(exit_code=1, quiet=True)
        self.run = None
