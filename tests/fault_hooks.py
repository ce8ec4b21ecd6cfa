"""Fault injection for the reliability tests, kept out of the product.

``install()`` patches the toy2d task and the run store so that a test can ask, through keys it adds
on the command line (``+task.fault.<key>=...``, part of the run's identity like any other value):

- ``sleep_per_step``: seconds to sleep in each step (keeps a run alive long enough to kill it);
- ``raise_at_step``: raise RuntimeError when this step is reached;
- ``kill_at_step`` (+ ``kill_marker``, a path; optional ``kill_seed``): SIGKILL the training process
  at this step (only in the run of that seed), once: the marker file records that it happened, so
  the relaunch trains through;

and, through the environment, ``OPTREPRO_TEST_KILL_IN_CHECKPOINT=N``: SIGKILL the process halfway
through its N-th checkpoint write. In-process tests get the patches from conftest; subprocesses
started by ``conftest.cli`` get them from ``tests/fault_site/sitecustomize.py``, which Python
imports at start-up in every process (parallel launchers' workers too).
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


def install() -> None:
    """Patch Toy2DTask and RunDir (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    import torch

    from optrepro import runs
    from optrepro.tasks.toy2d import Toy2DTask

    original_init, original_step = Toy2DTask.__init__, Toy2DTask.train_step
    original_save = runs.RunDir.save_checkpoint

    def __init__(self: Any, cfg: Any, ctx: Any) -> None:
        original_init(self, cfg, ctx)
        self._fault = dict(cfg.get("fault") or {})
        self._seed = ctx.seed

    def train_step(self: Any) -> dict[str, Any]:
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
        return original_step(self)

    def save_checkpoint(self: Any, state: Any) -> None:
        self._checkpoints_written = getattr(self, "_checkpoints_written", 0) + 1
        kill_at = os.environ.get(KILL_IN_CHECKPOINT)
        if self.writer and kill_at and int(kill_at) == self._checkpoints_written:
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
    Toy2DTask.train_step = train_step  # type: ignore[method-assign]
    runs.RunDir.save_checkpoint = save_checkpoint  # type: ignore[method-assign]
