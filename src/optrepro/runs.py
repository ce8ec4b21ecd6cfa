"""The run store: one folder per resolved config, written so that no result is ever lost or corrupted.

Layout of a run folder (README, "Single runs")::

    <results_dir>/<task>_<optimizer>_s<seed>_<hash>/
        config.yaml     fully resolved config (written first)
        env.json        git SHA, torch/CUDA versions, device name
        metrics.jsonl   one JSON object per eval point
        checkpoint.pt   latest training state (atomic)
        summary.json    written last, atomically: the run is complete only when it exists
        run.lock        held while a process trains this config

Every write of a whole file goes through a temporary file in the same folder and ``os.replace``,
so a kill -9 leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from optrepro.errors import UserError
from optrepro.identity import NON_IDENTITY_KEYS, config_hash, identity_config  # noqa: F401 - re-exported

STATUSES = ("completed", "diverged", "failed")


# ----------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


# ----------------------------------------------------------------------------- identity
# identity_config / config_hash: optrepro.identity, the one definition (also used by the analysis)


def optimizer_label(cfg: DictConfig) -> str:
    """The optimizer config a run chose (e.g. ``adabelief_v005``), else its class key."""
    return str(cfg.optimizer.get("config_name", cfg.optimizer.get("name", "opt")))


def run_name(cfg: DictConfig) -> str:
    """Readable prefix + content hash, e.g. ``toy2d_adam_s0_3f2a9c1b7d``."""
    task = cfg.task.get("name", "task")
    return f"{task}_{optimizer_label(cfg)}_s{cfg.seed}_{config_hash(cfg)}"


# ----------------------------------------------------------------------------- environment
def environment_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What produced a result: code version, library versions, hardware."""
    info: dict[str, Any] = {
        "git_sha": _git_sha(),
        "git_dirty": _git_dirty(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info["device"] = str(dev)
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_sha() -> str | None:
    return _git("rev-parse", "HEAD")


def _git_dirty() -> bool | None:
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out)


# ----------------------------------------------------------------------------- the store
class RunLockedError(UserError):
    """Another live process is training this config."""


class RunDir:
    """One run's folder: the only code that reads or writes its files."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path = Path(path)
        #: False on data-parallel ranks other than 0: they read (resume) but never write
        self.writer = writer

    # paths ---------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def env_path(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def lock_path(self) -> Path:
        return self.path / "run.lock"

    # state ---------------------------------------------------------------
    def is_complete(self) -> bool:
        return self.summary_path.exists()

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: everything after it is void
                break
        return rows

    # writing -------------------------------------------------------------
    def create(self, cfg: DictConfig, device: torch.device | str | None) -> None:
        """Make the folder and write config.yaml and env.json (config first: it names the run)."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".*.tmp*"):  # temp files of a write cut by a kill
            leftover.unlink()
        text = OmegaConf.to_yaml(cfg, resolve=True)
        if self.config_path.exists() and identity_config(OmegaConf.load(self.config_path)) != identity_config(cfg):
            raise UserError(
                f"run folder {self.path} holds a different config.yaml; refusing to overwrite it "
                "(remove the folder or change results_dir)"
            )
        if not self.config_path.exists():
            atomic_write_text(self.config_path, text)
        env = environment_info(device)
        if self.env_path.exists():  # a resumed run keeps the first env and records each restart
            previous = json.loads(self.env_path.read_text())
            previous.setdefault("resumed", []).append(env)
            env = previous
        atomic_write_json(self.env_path, env)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one eval point; the line is flushed and fsynced so a kill cannot lose it."""
        if not self.writer:
            return
        line = json.dumps(dict(row), sort_keys=True, default=_json_default)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop eval points logged after the checkpoint (they will be recomputed)."""
        if not self.writer:
            return
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        if not self.writer:
            return
        self._checkpoints_written = getattr(self, "_checkpoints_written", 0) + 1
        kill_at = os.environ.get("OPTREPRO_FAULT_KILL_IN_CHECKPOINT")
        if kill_at and int(kill_at) == self._checkpoints_written:
            _die_while_writing(self.checkpoint_path, state)
        atomic_torch_save(self.checkpoint_path, dict(state))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None (with a warning) when it is missing or unreadable."""
        if not self.checkpoint_path.exists():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means: start over
            warnings.warn(
                f"checkpoint {self.checkpoint_path} is unreadable ({type(exc).__name__}); "
                "restarting this run from scratch",
                stacklevel=2,
            )
            if self.writer:
                bad = self.checkpoint_path.with_name(f"checkpoint.corrupt.{int(time.time())}.pt")
                os.replace(self.checkpoint_path, bad)
            return None
        if not isinstance(state, dict) or "task" not in state:
            warnings.warn(f"checkpoint {self.checkpoint_path} has no task state; restarting", stacklevel=2)
            return None
        return state

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        status = summary.get("status")
        if status not in STATUSES:
            raise ValueError(f"summary status must be one of {STATUSES}, got {status!r}")
        if not self.writer:
            return
        atomic_write_json(self.summary_path, dict(summary))

    # locking -------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive claim on this run; a lock left by a dead process on this host is taken over."""
        if not self.writer:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._lock_is_stale():
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.lock_path)
                    continue
                holder = self._read_lock()
                raise RunLockedError(
                    f"run {self.path.name} is being trained by pid {holder.get('pid')} on "
                    f"{holder.get('host')}; not starting it twice"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:  # pragma: no cover - two stale-lock takeovers in a row
            raise RunLockedError(f"could not take the lock {self.lock_path}")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self._read_lock().get("pid") == os.getpid():
                    os.remove(self.lock_path)

    def _read_lock(self) -> dict[str, Any]:
        try:
            return json.loads(self.lock_path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def _lock_is_stale(self) -> bool:
        holder = self._read_lock()
        if not holder:  # empty or half-written lock: its writer died between open and write
            age = time.time() - self.lock_path.stat().st_mtime if self.lock_path.exists() else 1e9
            return age > 10
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell from here; another machine (SLURM) may own it
        pid = int(holder.get("pid", -1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _die_while_writing(path: Path, state: Mapping[str, Any]) -> None:
    """Fault test hook (OPTREPRO_FAULT_KILL_IN_CHECKPOINT=N): SIGKILL ourselves halfway through the
    N-th checkpoint write, exactly where a real kill would leave a half-written temp file."""
    import signal

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    data = buf.getvalue()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def check_writable(results_dir: Path) -> None:
    """Fail before any training when results can not be stored."""
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise UserError(f"results_dir {results_dir} is not writable ({reason}); set results_dir=...") from None


def iter_run_dirs(results_dir: Path) -> Iterator[RunDir]:
    """Every run folder (one that has a config.yaml) under ``results_dir``, recursively."""
    for config in sorted(Path(results_dir).rglob("config.yaml")):
        if ".hydra" in config.parts:
            continue
        yield RunDir(config.parent)
