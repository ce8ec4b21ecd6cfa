"""The AdaBelief paper's 2-D test functions (its Figure 3 and project page).

One point (x, y) is optimized from a fixed start. Metrics: loss, distance to the optimum, and the
first step within ``tolerance`` of it. The whole trajectory is kept (in the checkpoint, so it
survives a resume) and written to ``trajectory.csv`` for the paper-style contour figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from optrepro.tasks.base import FixedStepsTask, RunContext


@dataclass(frozen=True)
class TestFunction:
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    start: tuple[float, float]
    optimum: tuple[float, float]
    #: plotting window (xmin, xmax, ymin, ymax) for the analysis figure
    window: tuple[float, float, float, float]


def _beale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


FUNCTIONS: dict[str, TestFunction] = {
    "l1": TestFunction(lambda x, y: x.abs() + y.abs(), (-2.5, 0.0), (0.0, 0.0), (-3, 3, -3, 3)),
    "l1_rotated": TestFunction(
        lambda x, y: (x + y).abs() + (x - y).abs() / 10, (2.5, 0.0), (0.0, 0.0), (-3, 3, -3, 3)
    ),
    "quadratic_rotated": TestFunction(
        lambda x, y: (x + y) ** 2 + (x - y) ** 2 / 10, (2.5, 0.0), (0.0, 0.0), (-3, 3, -3, 3)
    ),
    "l1_scaled": TestFunction(lambda x, y: x.abs() / 10 + y.abs(), (0.5, -1.5), (0.0, 0.0), (-2, 2, -2, 2)),
    "beale": TestFunction(_beale, (-2.5, -2.5), (3.0, 0.5), (-4.5, 4.5, -4.5, 4.5)),
    "rosenbrock": TestFunction(
        lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2, (-4.0, -4.0), (1.0, 1.0), (-5, 5, -5, 12)
    ),
}


class Toy2DTask(FixedStepsTask):
    metric = "loss"
    mode = "min"
    data_parallel_refusal = "it optimizes one 2-D point: there is no batch to split"
    state_attrs = ("step", "point", "optimizer", "trajectory", "steps_to_tol")
    population_refusal = ""

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        self.function = FUNCTIONS[str(cfg.function)]
        self.tolerance = float(cfg.tolerance)
        # float64: the paths are tiny problems where rounding would otherwise dominate at small eps
        self.point = torch.nn.Parameter(torch.tensor(self.function.start, dtype=torch.float64))
        self.optimizer = ctx.make_optimizer([self.point])
        self.trajectory = torch.full((self.steps + 1, 3), math.nan, dtype=torch.float64)
        self.trajectory[0, :2] = self.point.detach()
        self.trajectory[0, 2] = self._loss().detach()
        self.steps_to_tol: int | None = None

    def _loss(self) -> torch.Tensor:
        return self.function.fn(self.point[0], self.point[1])

    def _distance(self) -> float:
        return float(torch.linalg.vector_norm(self.point.detach() - torch.tensor(self.function.optimum,
                                                                                 dtype=torch.float64)))

    def train_step(self) -> dict[str, Any]:
        batch = self.member_batch()
        self.optimizer.zero_grad(set_to_none=True)
        loss, stats = self.member_loss([self.point], [], batch)
        loss.backward()
        self.optimizer.step()
        return self.member_end_step(loss, stats)

    def member_batch(self) -> None:
        return None  # the test function is the whole objective: no data

    def member_loss(self, params: list[torch.Tensor], buffers: list[torch.Tensor],
                    batch: None) -> tuple[torch.Tensor, dict[str, Any]]:
        point = params[0]
        return self.function.fn(point[0], point[1]), {}

    def member_end_step(self, loss: torch.Tensor, stats: dict[str, Any]) -> dict[str, Any]:
        self.step += 1
        with torch.no_grad():
            self.trajectory[self.step, :2] = self.point
            self.trajectory[self.step, 2] = self._loss()
        if self.steps_to_tol is None and self._distance() <= self.tolerance:
            self.steps_to_tol = self.step
        return {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            out = {"loss": float(self._loss()), "distance": self._distance()}
        if self.steps_to_tol is not None:
            out["steps_to_tol"] = float(self.steps_to_tol)
        return out

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        lines = ["step,x,y,loss"]
        for i, (x, y, f) in enumerate(self.trajectory[: self.step + 1].tolist()):
            lines.append(f"{i},{x!r},{y!r},{f!r}")
        (run_dir / "trajectory.csv").write_text("\n".join(lines) + "\n")
        return {
            "steps_to_tol": self.steps_to_tol,
            "artifacts": {"trajectory": "trajectory.csv"},
            "toy2d": {"function": str(self.cfg.function), "start": list(self.function.start),
                      "optimum": list(self.function.optimum), "window": list(self.function.window)},
        }
