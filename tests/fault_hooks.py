"""Fault injection for the reliability tests, kept out of the product.

``install()`` patches the toy2d task and the run store so that a test can ask, through keys it adds
on the command line (``+task.fault.<key>=...``, part of the run's identity like any other value):

- ``sleep_per_step``: seconds to sleep in each step (keeps a run alive long enough to kill it);
- ``raise_at_step``: raise RuntimeError when this step is reached;
- ``kill_at_step`` (+ ``kill_marker``, a path; optional ``kill_seed``): SIGKILL the training process
  at this step (only in the run of that seed), once: the marker file records that it happened, so
  the relaunch trains through;
- ``raise_in_eval_seed``: raise RuntimeError in the evaluation of the run of this seed (a population
  member's failure that its population must survive);

and, through the environment, ``OPTREPRO_TEST_KILL_IN_CHECKPOINT=N``: SIGKILL the process halfway
through the N-th checkpoint write of the process (counted over all its runs: in a population the
members write in turn, so a kill there leaves them at different checkpoint steps).

The step faults fire from ``member_batch``, which starts every training step both of a run alone
(``train_step``) and of a population member (``optrepro.population``, which never calls ``train_step``).
In-process tests get the patches from conftest; subprocesses started by ``conftest.cli`` get them
from ``tests/fault_site/sitecustomize.py``, which Python imports at start-up in every process
(parallel launchers' workers too).
"""

from __future__ import annotations

import io
import os
import signal
import time
from typing import Any

KILL_IN_CHECKPOINT = "OPTREPRO_TEST_KILL_IN_CHECKPOINT"
#: in-process only (not part of a run's identity): raise KeyboardInterrupt when this step is reached,
#: as Ctrl-C would; set by tests, e.g. with monkeypatch.setattr(fault_hooks, "interrupt_at_step", 50)
interrupt_at_step: int | None = None
_installed = False
_checkpoints_written = 0  # by this process, over all its runs


def install() -> None:
    """Patch Toy2DTask (member_batch, evaluate) and RunDir.save_checkpoint (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    import torch

    from optrepro import runs
    from optrepro.tasks.toy2d import Toy2DTask

    original_init, original_batch = Toy2DTask.__init__, Toy2DTask.member_batch
    original_evaluate = Toy2DTask.evaluate
    original_save = runs.RunDir.save_checkpoint

    def __init__(self: Any, cfg: Any, ctx: Any) -> None:
        original_init(self, cfg, ctx)
        self._fault = dict(cfg.get("fault") or {})
        self._seed = ctx.seed

    def member_batch(self: Any) -> Any:
        fault = getattr(self, "_fault", {})
        at = self.step + 1
        if fault.get("raise_at_step") is not None and at >= int(fault["raise_at_step"]):
            raise RuntimeError(f"fault injected at step {at} (task.fault.raise_at_step)")
        if interrupt_at_step is not None and at == interrupt_at_step:
            raise KeyboardInterrupt
        seed_matches = fault.get("kill_seed") is None or int(fault["kill_seed"]) == self._seed
        if fault.get("kill_at_step") is not None and at >= int(fault["kill_at_step"]) and seed_matches:
            try:
                os.close(os.open(str(fault["kill_marker"]), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # killed once already
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        if fault.get("sleep_per_step"):
            time.sleep(float(fault["sleep_per_step"]))
        return original_batch(self)

    def evaluate(self: Any) -> dict[str, float]:
        fault = getattr(self, "_fault", {})
        if fault.get("raise_in_eval_seed") is not None and int(fault["raise_in_eval_seed"]) == self._seed:
            raise RuntimeError(f"fault injected in the evaluation at step {self.step} (task.fault.raise_in_eval_seed)")
        return original_evaluate(self)

    def save_checkpoint(self: Any, state: Any) -> None:
        global _checkpoints_written
        _checkpoints_written += 1
        kill_at = os.environ.get(KILL_IN_CHECKPOINT)
        if self.writer and kill_at and int(kill_at) == _checkpoints_written:
            buf = io.BytesIO()
            torch.save(dict(state), buf)
            data = buf.getvalue()
            tmp = self.checkpoint_path.with_name(f".{self.checkpoint_path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as f:  # exactly where a real kill would leave a half-written temp file
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        original_save(self, state)

    Toy2DTask.__init__ = __init__  # type: ignore[method-assign]
    Toy2DTask.member_batch = member_batch  # type: ignore[method-assign]
    Toy2DTask.evaluate = evaluate  # type: ignore[method-assign]
    runs.RunDir.save_checkpoint = save_checkpoint  # type: ignore[method-assign]
