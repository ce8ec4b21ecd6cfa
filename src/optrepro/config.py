"""The composed Hydra config is the config that runs; this module checks it and words its errors.

Recipes, profiles and experiments are ordinary Hydra configs (configs/train.yaml's defaults list says
the order: optimizer < recipe < profile < experiment < command line). Nothing here rewrites the
composed config: :func:`resolve_interpolations` only resolves its interpolations, so ``--cfg job --resolve``,
the run's ``config.yaml`` and its hash agree.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from optrepro.errors import UserError

#: The config tree: the package's own configs/ (in a checkout a symlink to the top-level configs/, in an
#: installed wheel a copy), or OPTREPRO_CONFIG_DIR.
CONFIG_DIR = Path(os.environ.get("OPTREPRO_CONFIG_DIR", Path(__file__).resolve().parent / "configs"))
GROUPS = ("task", "optimizer", "profile", "experiment")
PRECISIONS = ("fp32", "bf16", "fp16")
INT64 = (-(2**63), 2**63 - 1)


def group_options(group: str) -> list[str]:
    """Config names available in a group folder (e.g. every file in configs/task/)."""
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


# ------------------------------------------------------------------------------ overrides
def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # hydra's OverrideParseException is multi-line
        raise UserError(f"cannot parse the command line: {_first_line(exc)}") from None


def expand_for_checking(overrides: Sequence[str]) -> list[list[str]]:
    """Single-run override lists that together use every value of every sweep once.

    ``a=1,2 b=x,y,z`` gives ``[a=1 b=x]``, ``[a=2 b=x]``, ``[a=1 b=y]``, ``[a=1 b=z]``: each value
    is checked once without composing the whole grid. An interval (an Optuna search space) is checked
    at its two ends.
    """
    parsed = parse_overrides(overrides)
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            key = o.input_line.split("=", 1)[0]
            if o.is_interval_sweep():  # a search space (hydra/sweeper=optuna): check both of its ends
                interval = o.value()
                values = [f"{key}={interval.start}", f"{key}={interval.end}"]
            else:
                values = [f"{key}={v}" for v in o.sweep_string_iterator()]
            if not values:
                raise UserError(f"'{o.input_line}' sweeps over no values")
            sweeps.append((len(base), values))
            base.append(values[0])
        else:
            base.append(o.input_line)
    combos = [list(base)]
    for position, values in sweeps:
        for value in values[1:]:
            combo = list(base)
            combo[position] = value
            combos.append(combo)
    return combos


def check_group_choices(overrides: Sequence[str]) -> None:
    """Unknown task/optimizer/profile/experiment names, as one line listing the valid ones."""
    for o in parse_overrides(overrides):
        group = o.key_or_group
        if group not in GROUPS:
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        allowed = group_options(group)
        for value in values:
            if value is None or str(value) == "null":
                continue
            if str(value) not in allowed:
                raise UserError(f"unknown {group} '{value}' ({group}={value}); choose one of: {', '.join(allowed)}")


# ------------------------------------------------------------------------------ resolution
def resolve_interpolations(cfg: DictConfig) -> DictConfig:
    """The composed config with its interpolations resolved (``${.data.name}``, ``${oc.env:...}``)."""
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except Exception as exc:  # noqa: BLE001 - omegaconf's interpolation errors are multi-line
        raise UserError(f"cannot resolve the config: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------ validation
def resolve_device(name: str) -> torch.device:
    """The torch device ``device=`` names, refused in one line unless this machine has it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise UserError(f"device={name} but this machine has {count} CUDA device(s) "
                            f"(cuda:0..cuda:{count - 1}); use one of those or device=auto")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device={name} but MPS (Apple GPU) is not available here; use device=cpu or device=auto")
        return device
    raise UserError(f"device={name} is not supported by the training loop; use auto, cpu, cuda or cuda:N")


def resolve_precision(name: str, device: torch.device) -> str:
    """Check the precision and set the matching float32 matmul policy on GPUs.

    fp32 turns TF32 off (cuBLAS matmuls and cuDNN convolutions) so a GPU computes in IEEE fp32, as the
    reference runs did (their GPUs and PyTorch versions had no TF32). bf16 and fp16 are autocast
    speed options, chosen explicitly; under them float32 ops left outside autocast may use TF32.
    """
    if name not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got '{name}'")
    if device.type == "cuda":
        tf32 = name != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return name


def validate_config(cfg: DictConfig) -> None:
    """Catch bad values before any folder is written; each error names its key."""
    from optrepro.optim import build_optimizer
    from optrepro.tasks import schemas as task_schemas

    check_known_keys(cfg)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not INT64[0] <= seed <= INT64[1]:
        raise UserError(f"seed must be an integer in [-2**63, 2**63), got {seed!r}")
    check_finite(cfg.optimizer, "optimizer")
    check_finite(cfg.task, "task")
    resolve_device(str(cfg.get("device", "auto")))  # device=cuda without CUDA: before anything is written
    if cfg.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got '{cfg.precision}'")
    every = cfg.checkpoint.get("every_steps", 0)
    if not isinstance(every, int) or every < 0:
        raise UserError(f"checkpoint.every_steps must be an integer >= 0, got {every!r}")
    for key in ("lr", "eps", "weight_decay"):
        value = cfg.optimizer.get(key)
        if value is not None and not isinstance(value, (int, float)):
            raise UserError(f"optimizer.{key} must be a number, got {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise UserError(f"optimizer.{key} must be a number, got nan")
    if cfg.optimizer.get("lr") == 0:  # every parameter would stay where it starts: a run that is no run
        raise UserError("optimizer.lr=0 leaves every parameter where it starts (a no-op run); use optimizer.lr > 0")
    betas = cfg.optimizer.get("betas")
    if betas is not None and (not isinstance(betas, (ListConfig, list, tuple)) or len(betas) != 2):
        raise UserError(f"optimizer.betas must be a pair like [0.9,0.999], got {betas!r}")
    try:  # the optimizer's own checks (ranges of lr, eps, betas, ...), on a throwaway parameter
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optimizer)
    except (ValueError, TypeError) as exc:
        message = _first_line(exc)
        if "optimizer." not in message:
            message = f"optimizer ({cfg.optimizer.get('name')}): {message}"
        raise UserError(message) from None
    task_schemas.validate(cfg.task)  # unknown key, wrong type, out of range: one line naming the key


def known_keys() -> DictConfig:
    """The keys something reads outside ``task`` and ``optimizer`` (whose schemas check their own):
    configs/train.yaml's, and the profile's name."""
    spec = OmegaConf.load(CONFIG_DIR / "train.yaml")
    for key in ("defaults", "hydra"):
        spec.pop(key, None)
    spec.profile = {"name": ""}
    return spec


def check_known_keys(cfg: DictConfig) -> None:
    """A key nothing reads (``+eps=1e-8``, ``+wandb.verbos=true``) is refused: the run would ignore it."""

    def walk(node: DictConfig, spec: DictConfig, prefix: str) -> None:
        for key in node:
            name = f"{prefix}{key}"
            if name in ("task", "optimizer", "hydra"):  # checked by their schemas; hydra's own node, if composed
                continue
            if key not in spec:
                raise UserError(unknown_key_message(name, cfg, _show(node[key])))
            if isinstance(node[key], DictConfig) and isinstance(spec[key], DictConfig):
                walk(node[key], spec[key], f"{name}.")

    walk(cfg, known_keys(), "")


def unknown_key_message(key: str, cfg: DictConfig, value: str = "...") -> str:
    """One line for a key nothing reads: what it is not, and where a key of that name lives, if anywhere."""
    parent, _, last = key.rpartition(".")
    homes = [path for path in _key_paths(cfg) if path.rpartition(".")[2] == last and path != key]
    where = (f"; it is {' or '.join(homes[:3])} (set {homes[0]}={value})" if homes
             else "; see `python -m optrepro.train --cfg job` for the keys")
    if parent == "optimizer":
        name = cfg.optimizer.get("name")
        own = [k for k in cfg.optimizer if k not in ("name", "config_name")]
        return (f"unknown config key '{key}': optimizer {name} has no {last} (its keys: {', '.join(own)}); "
                f"leave {key} out for {name}")
    if not parent:
        return f"unknown config key '{key}': nothing reads a top-level {last}{where}"
    return f"unknown config key '{key}': nothing reads it{where}"


def _key_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key under ``node`` (dicts only; list items are not keys)."""
    if isinstance(node, DictConfig):
        for key in node:
            path = f"{prefix}{key}"
            yield path
            yield from _key_paths(node._get_node(key), f"{path}.")


def check_finite(node: Any, prefix: str) -> None:
    """Every number under ``node`` is finite: ``optimizer.lr=inf`` or a NaN would only diverge later."""
    items = node.items() if isinstance(node, (DictConfig, dict)) else (
        enumerate(node) if isinstance(node, (ListConfig, list, tuple)) else ())
    for key, value in items:
        name = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}"
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
        check_finite(value, name)


def check_value_types(overrides: Sequence[str], defaults: DictConfig) -> None:
    """Each ``key=value`` of a single-run command line has the type of the key's default.

    ``task.steps=abc``, ``seed=true`` or ``seed=2**70`` (a string to Hydra) would otherwise reach a
    task's ``int()`` as a traceback. Keys added with ``+`` and interpolations are checked later.
    """
    for o in parse_overrides(overrides):
        key = o.key_or_group
        if key.startswith("hydra") or key in GROUPS or "/" in key or o.is_add() or o.is_force_add() or o.is_delete():
            continue
        value = o.value()
        if isinstance(value, str) and "${" in value:
            continue
        default = OmegaConf.select(defaults, key, throw_on_resolution_failure=False)
        problem = _type_problem(value, default)
        if problem:
            raise UserError(f"{key} must be {problem}, got {_show(value)}")


def _type_problem(value: Any, default: Any) -> str | None:
    """What ``value`` should be to replace ``default``, or None when it fits."""
    if value is None or default is None or isinstance(default, (DictConfig, ListConfig, str)):
        return None  # null means "unset" (e.g. valid_bleu_subset=null); the task's own check decides
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer"
        return None if INT64[0] <= value <= INT64[1] else "an integer in [-2**63, 2**63)"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "a number"
        return None if math.isfinite(value) else "a finite number"
    return None


def _show(value: Any) -> str:
    """A value as it was typed: 'abc', true, 1.5."""
    if isinstance(value, str):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _typed_value(combo: Sequence[str], key: str) -> str:
    """The value ``key`` was given on the command line (``...`` if it was not)."""
    for item in combo:
        name, _, value = item.partition("=")
        if name.lstrip("+~") == key:
            return value
    return "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def train_composer() -> Iterator[Callable[..., DictConfig]]:
    """``compose(overrides, **kwargs)``: configs/train.yaml composed outside a Hydra app (planning a sweep,
    checking a command line), exactly as Hydra would compose it; Hydra's global state is cleared around it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            yield lambda overrides, **kwargs: compose(config_name="train", overrides=list(overrides), **kwargs)
    finally:
        GlobalHydra.instance().clear()


def compose_train(overrides: Iterable[str], **kwargs: Any) -> DictConfig:
    """One config of :func:`train_composer`."""
    with train_composer() as compose:
        return compose(overrides, **kwargs)


def preflight(argv: Iterable[str]) -> None:
    """Compose and validate every single-run config a command line implies, before Hydra starts.

    Turns Hydra/OmegaConf's multi-line errors into one line and catches bad values of every
    swept value before the first job trains; in a sweep the line names the job (its overrides).
    """
    overrides = [a for a in argv if not a.startswith("-")]
    check_group_choices(overrides)
    combos = expand_for_checking(overrides)
    with train_composer() as compose:
        defaults: dict[tuple[str, ...], DictConfig] = {}
        for combo in combos:
            try:
                check_job(compose, combo, defaults)
            except UserError as exc:
                if len(combos) == 1:
                    raise
                raise UserError(f"sweep job '{' '.join(combo)}': {exc}") from None


def check_job(compose: Callable[..., DictConfig], combo: list[str], defaults: dict[tuple[str, ...], DictConfig]
              ) -> None:
    """One job of a command line: its value types, its composition, its values, its results folder."""
    choices = tuple(o for o in combo if o.split("=", 1)[0].lstrip("+~") in GROUPS)
    try:
        if choices not in defaults:
            defaults[choices] = compose(choices)
        check_value_types(combo, defaults[choices])
        cfg = compose(combo)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any compose error is a config error
        raise UserError(_compose_message(exc, defaults.get(choices), combo)) from None
    resolved = resolve_interpolations(cfg)
    validate_config(resolved)
    check_results_dir(Path(str(resolved.results_dir)))


def check_results_dir(results_dir: Path) -> None:
    """results_dir can be a folder here, without creating anything: a sweep makes ``.sweeps/`` in it before
    its first job, so a file in its place must be refused before Hydra starts."""
    existing = next(p for p in (results_dir, *results_dir.parents) if os.path.lexists(p) or p == p.parent)
    if existing.exists() and not existing.is_dir():
        where = "" if existing == results_dir else f" ({existing} is a file)"
        raise UserError(f"results_dir {results_dir} is not a folder{where}; set results_dir=<a folder>")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):  # worded as check_writable words it
        reason = os.strerror(errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES)
        raise UserError(f"results_dir {results_dir} is not writable ({reason}); set results_dir=...")


def _compose_message(exc: BaseException, defaults: DictConfig | None, combo: Sequence[str]) -> str:
    """Hydra's compose error as one line; a key that does not exist is named with where it does, never
    with a ``+key`` hint (a key added with + that nothing reads would be silently ignored)."""
    text = f"{exc}\n{exc.__cause__ or ''}"
    first = _first_line(exc)
    if "not in struct" in text and first.startswith("Could not override '"):
        key = first.split("'")[1]
        if defaults is not None:
            return unknown_key_message(key, defaults, _typed_value(combo, key))
        return f"unknown config key '{key}' (see `python -m optrepro.train --cfg job` for the keys)"
    if first.startswith("Could not append to config. An item is already at '"):
        key = first.split("'")[1]
        owner = f" of {defaults.optimizer.name}" if defaults is not None and key.startswith("optimizer.") else ""
        return f"{key} is already a key{owner}: set it without + ({key}={_typed_value(combo, key)})"
    return first
