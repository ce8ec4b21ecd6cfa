"""The run store: one folder per resolved config, written so that no result is ever lost or corrupted.

Layout of a run folder (README, "Single runs")::

    <results_dir>/<task>_<optimizer>_s<seed>_<hash>/
        config.yaml     fully resolved config (written first)
        env.json        git SHA, torch/CUDA versions, device name
        data.json       the data files read and whether they are the real dataset (optrepro.data.provenance)
        metrics.jsonl   one JSON object per eval point
        checkpoint.pt   latest training state (atomic)
        summary.json    written last, atomically: the run is complete only when it exists
        run.lock        held while a process trains this config

Every write of a whole file goes through a temporary file in the same folder and ``os.replace``,
so a kill -9 leaves either the old or the new file, never half of one; a write that fails (a full
disk) removes its temporary. Nothing is written or read through a symlink.

Every file is verified before it is trusted: the checkpoint carries a digest of its content and the
byte length + sha256 of ``metrics.jsonl`` at that step; ``summary.json`` carries the digest of the
whole ``metrics.jsonl``. A file that fails its check is kept beside, renamed
``<stem>.corrupt.<time><suffix>``, with one ``warning:`` line, and the run goes on from what is
still sound (resume from the checkpoint, or start over); it never silently loses history.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from optrepro.errors import UserError
from optrepro.identity import NON_IDENTITY_KEYS, config_hash, identity_config  # noqa: F401 - re-exported
from optrepro.status import SUMMARY_STATUSES


# ----------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename; the temp file never outlives a
    failed write, and neither it nor ``path`` is followed if it is a symlink (rename replaces a link)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # ours from an earlier failed write, or a planted link
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``; OSError (ELOOP) when it is a symlink: run files are never links."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def state_digest(obj: Any) -> str:
    """sha256 over a checkpoint's structure and every tensor's bytes: a flipped bit anywhere changes it."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (not warnings.warn: that adds a source line)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def set_aside(path: Path, kind: str = "corrupt") -> Path:
    """Rename ``dir/stem.suffix`` to ``dir/stem.<kind>.<time>.suffix`` (a link is renamed, not followed)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        target = path.with_name(f"{path.stem}.{kind}.{stamp}{f'-{n}' if n else ''}{path.suffix}")
        if not os.path.lexists(target):
            os.replace(path, target)
            return target
    raise OSError(f"cannot set {path} aside")  # pragma: no cover


class DamagedFileError(Exception):
    """A run file that exists but does not read back as what the run store wrote."""


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


#: Keys every checkpoint holds; one without them is set aside like an unreadable one.
CHECKPOINT_KEYS = ("task", "rng", "step", "wall_time", "checksum", "metrics_bytes", "metrics_sha256")


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
    def data_path(self) -> Path:
        return self.path / "data.json"

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

    # checks --------------------------------------------------------------
    def check_folder(self) -> None:
        """Refuse a run folder that is a symlink: runs are written only inside results_dir."""
        if self.path.is_symlink():
            raise UserError(f"run folder {self.path} is a symlink (to {os.readlink(self.path)}); runs are only "
                            "written inside results_dir: remove the link and relaunch")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder; move it away and relaunch")

    def _set_aside(self, path: Path, why: str, then: str, kind: str = "corrupt") -> None:
        """Keep a bad file beside under a new name and say so in one line (rank 0 only)."""
        if not self.writer:
            return
        kept = f"; kept as {set_aside(path, kind).name}" if os.path.lexists(path) else ""
        warn(f"{path} {why}{kept}; {then}")

    def set_aside_symlinks(self) -> None:
        """Rename every symlink in the folder, so that no write can go through one."""
        if not self.writer or not self.path.is_dir():
            return
        for entry in sorted(self.path.iterdir()):
            if entry.is_symlink():
                self._set_aside(entry, "is a symlink", "a run writes only regular files", kind="symlink")

    # state ---------------------------------------------------------------
    def read_summary(self) -> dict[str, Any]:
        """summary.json, or DamagedFileError when it is not a sound summary of this folder."""
        try:
            summary = json.loads(read_bytes(self.summary_path).decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedFileError(f"is unreadable ({type(exc).__name__})") from None
        if not isinstance(summary, dict) or summary.get("status") not in SUMMARY_STATUSES:
            raise DamagedFileError("is not a run summary")
        if not _checksum_ok(summary):
            raise DamagedFileError("fails its checksum (its content changed)")
        digest = summary.get("metrics_sha256")
        try:
            metrics = self._metrics_bytes()
        except OSError as exc:
            raise DamagedFileError(f"cannot be checked: metrics.jsonl is unreadable ({exc.strerror})") from None
        if digest is not None and _sha256(metrics) != digest:
            raise DamagedFileError("does not match metrics.jsonl (metrics.jsonl was changed or damaged)")
        return summary

    def finished_summary(self) -> dict[str, Any] | None:
        """The summary of a finished run, or None; a damaged one is set aside (the run then resumes or
        retrains, whichever its checkpoint allows)."""
        if not os.path.lexists(self.summary_path):
            return None
        try:
            return self.read_summary()
        except DamagedFileError as exc:
            self._set_aside(self.summary_path, str(exc), "the run is trained again")
            return None

    def _metrics_bytes(self) -> bytes:
        try:
            return read_bytes(self.metrics_path)
        except FileNotFoundError:
            return b""

    # writing -------------------------------------------------------------
    def verify(self, cfg: DictConfig) -> None:
        """Before a run folder is trusted: its symlinks renamed away, a damaged config.yaml (set aside
        and written anew: the folder's name is the hash of the config, so the config is known) or
        env.json (set aside) dealt with; a sound config.yaml of another config refuses, in one line."""
        if not self.writer:
            return
        self.check_folder()
        if not self.path.is_dir():
            return
        self.set_aside_symlinks()
        if os.path.lexists(self.config_path):
            problem = self._config_problem(cfg)
            if problem == "another config":
                raise UserError(
                    f"run folder {self.path} holds a different config.yaml; refusing to overwrite it "
                    "(remove the folder or change results_dir)"
                )
            if problem:
                self._set_aside(self.config_path, problem, "writing it anew from this config")
                atomic_write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))
        if os.path.lexists(self.env_path) and self._read_env() is None:
            self._set_aside(self.env_path, "is unreadable or fails its checksum",
                            "a new one is written when the run trains")

    def _config_problem(self, cfg: DictConfig) -> str | None:
        """None when config.yaml is this run's config; else why not. A config whose hash is not the
        folder's is damaged (the folder is named by its config's hash); "another config" means a
        sound config.yaml of a different config under the same hash, which is refused."""
        try:
            saved = OmegaConf.create(read_bytes(self.config_path).decode("utf-8"))
            if not isinstance(saved, DictConfig):
                return "is not a mapping (wrong structure)"
            identity = identity_config(saved)
        except Exception as exc:  # noqa: BLE001 - unreadable, not YAML, unresolvable: damaged all the same
            return f"is unreadable ({type(exc).__name__})"
        if identity == identity_config(cfg):
            return None
        if self.path.name.endswith(f"_{config_hash(identity)}"):
            return "another config"
        return "does not hash to this folder's name (damaged)"

    def _read_env(self) -> dict[str, Any] | None:
        try:
            env = json.loads(read_bytes(self.env_path).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return env if isinstance(env, dict) and _checksum_ok(env) else None

    def create(self, cfg: DictConfig, device: torch.device | str | None,
               data: Mapping[str, Any] | None = None) -> None:
        """Make the folder and write config.yaml, env.json and data.json (config first: it names the run)."""
        if not self.writer:
            return
        self.verify(cfg)
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".*.tmp*"):  # temp files of a write cut by a kill
            leftover.unlink()
        if not self.config_path.exists():
            atomic_write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))
        env = environment_info(device)
        previous = self._read_env() if self.env_path.exists() else None
        if previous is not None:  # a resumed run keeps the first env and records each restart
            previous.pop("checksum", None)
            previous.setdefault("resumed", []).append(env)
            env = previous
        atomic_write_json(self.env_path, _with_checksum(env))
        if data is not None:
            self.write_data(data)

    def write_data(self, data: Mapping[str, Any]) -> None:
        """data.json: what this attempt read. A resumed run whose data differs from the earlier attempt's
        trained on both, so it is recorded as not real, whatever each attempt read."""
        record = dict(data)
        previous = _read_checked_json(self.data_path) if os.path.lexists(self.data_path) else None
        if previous is not None:
            previous.pop("checksum", None)
            if _data_identity(previous) != _data_identity(record):
                record["real"] = False
                record["summary"] = f"{record.get('summary')}; the data changed between attempts of this run"
                record["check"] = "changed"
        atomic_write_json(self.data_path, _with_checksum(record))

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one eval point; the line is flushed and fsynced so a kill cannot lose it."""
        if not self.writer:
            return
        line = json.dumps(dict(row), sort_keys=True, default=_json_default)
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """The training state with the length and digest of metrics.jsonl so far, and its own digest."""
        if not self.writer:
            return
        metrics = self._metrics_bytes()
        state = {**state, "metrics_bytes": len(metrics), "metrics_sha256": _sha256(metrics)}
        atomic_torch_save(self.checkpoint_path, {**state, "checksum": state_digest(state)})

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint if it verifies, with metrics.jsonl cut back to its step; else None.

        A checkpoint that is unreadable, fails its digest or lacks a key is set aside and the run
        starts over; so is a metrics.jsonl whose rows up to the checkpoint changed (the history
        before it can not be rebuilt without training again).
        """
        if not os.path.lexists(self.checkpoint_path):
            return None
        restart = "restarting this run from scratch"
        try:
            state = torch.load(io.BytesIO(read_bytes(self.checkpoint_path)), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means: start over
            self._set_aside(self.checkpoint_path, f"is unreadable ({type(exc).__name__})", restart)
            return None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            self._set_aside(self.checkpoint_path, f"has the wrong structure (no {missing[0]!r})", restart)
            return None
        checksum = state.pop("checksum")
        if state_digest(state) != checksum:
            self._set_aside(self.checkpoint_path, "fails its checksum (its content changed)", restart)
            return None
        metrics = self._metrics_bytes()
        kept = metrics[: state["metrics_bytes"]]
        if len(kept) != state["metrics_bytes"] or _sha256(kept) != state["metrics_sha256"]:
            self._set_aside(self.metrics_path,
                            f"does not hold the rows logged up to the checkpoint at step {state['step']}", restart)
            return None
        if self.writer and len(metrics) != len(kept):  # rows logged after the checkpoint: recomputed
            atomic_write_bytes(self.metrics_path, kept)
        return state

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        status = summary.get("status")
        if status not in SUMMARY_STATUSES:
            raise ValueError(f"summary status must be one of {tuple(map(str, SUMMARY_STATUSES))}, got {status!r}")
        if not self.writer:
            return
        summary = {**summary, "metrics_sha256": _sha256(self._metrics_bytes())}
        atomic_write_json(self.summary_path, _with_checksum(summary))

    def write_error_log(self, text: str) -> None:
        if self.writer:
            atomic_write_text(self.path / "error.log", text)

    # locking -------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive claim on this run; a lock left by a dead (or unrelated) process on this host is taken over."""
        if not self.writer:
            yield
            return
        self.check_folder()
        self.path.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        me = {"pid": pid, "host": socket.gethostname(), "since": time.time(), "start": _process_start(pid),
              "run": self.path.name}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
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
            data = json.loads(read_bytes(self.lock_path).decode("utf-8") or "{}")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _lock_is_stale(self) -> bool:
        """Stale: empty for 10 s, or its pid is dead, or is alive but another process (its start time
        differs from the one recorded, or, for a lock without one, it is not optrepro)."""
        if self.lock_path.is_symlink():
            return True
        holder = self._read_lock()
        if not holder:  # empty or half-written lock: its writer died between open and write
            age = time.time() - self.lock_path.stat().st_mtime if self.lock_path.exists() else 1e9
            return age > 10
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell from here; another machine (SLURM) may own it
        try:
            pid = int(holder.get("pid", -1))
        except (TypeError, ValueError):
            return True
        if pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's: the checks below still apply
        start = _process_start(pid)
        if start is None:
            return False  # no /proc here: a live pid keeps its lock
        if holder.get("start") is not None:
            return holder.get("start") != start
        return "optrepro" not in _process_cmdline(pid)


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_checked_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file that passes its checksum, else None."""
    try:
        obj = json.loads(read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) and _checksum_ok(obj) else None


def _data_identity(record: Mapping[str, Any]) -> Any:
    """The part of a data record that says which bytes were read (not the words about them)."""
    return [record.get("dataset"), record.get("files"), record.get("manifest")]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_checksum(obj: Mapping[str, Any]) -> str:
    """sha256 of a JSON object's canonical text without its own ``checksum`` key."""
    rest = {k: v for k, v in obj.items() if k != "checksum"}
    return _sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"), default=_json_default).encode())


def _with_checksum(obj: Mapping[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(dict(obj), default=_json_default))  # what reading it back gives
    return {**plain, "checksum": json_checksum(plain)}


def _checksum_ok(obj: Mapping[str, Any]) -> bool:
    """True when ``obj`` carries no checksum (written before checksums) or a matching one."""
    return "checksum" not in obj or obj["checksum"] == json_checksum(obj)


def check_writable(results_dir: Path) -> list[Path]:
    """Fail before any training when results can not be stored.

    Returns the folders it had to create, deepest first: the caller removes them again when the
    run ends without writing anything (an error must leave nothing on disk).
    """
    results_dir = Path(results_dir)
    created = [p for p in (results_dir, *results_dir.parents) if not os.path.lexists(p)]
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        remove_empty_dirs(created)
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise UserError(f"results_dir {results_dir} is not writable ({reason}); set results_dir=...") from None
    return created


def remove_empty_dirs(paths: list[Path]) -> None:
    """rmdir each of ``paths`` (deepest first) that is an empty folder."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()


def iter_run_dirs(results_dir: Path) -> Iterator[RunDir]:
    """Every run folder (one that has a config.yaml) under ``results_dir``, recursively."""
    for config in sorted(Path(results_dir).rglob("config.yaml")):
        if ".hydra" in config.parts:
            continue
        yield RunDir(config.parent)
