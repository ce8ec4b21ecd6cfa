"""Run identity: the one definition of which config keys say *what* a run computes.

The run store (runs.py: folder names, hashes) and the analysis (analysis/load.py: which runs are
one setting) both use :func:`identity_config`, so a key that changes the hash also separates
settings and a key that does not (where data lives, how fast it loads, where results go) does neither.
No torch import: the analysis stays light.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Version of the config layout (keys, recipes as configs). A run folder whose config.yaml has another
#: ``config_layout`` (or none: written before the layout existed) is refused by the analysis.
CONFIG_LAYOUT = 2

#: Top-level keys outside the identity: where results go, which device, how a run is logged, checkpointed,
#: watched or scheduled. ``precision`` and ``seed`` are inside: they change the numbers.
NON_IDENTITY_KEYS = ("results_dir", "wandb", "checkpoint", "device", "progress", "hydra", "sweep")

#: Leaves anywhere under ``task`` that locate files or tune loading, not what is computed: data roots and
#: archives, weights files, download switches, DataLoader / preparation workers.
LOCATION_LEAVES = ("root", "raw", "download", "url", "num_workers", "prepare_workers", "weights_path",
                   "backbone_weights", "cache_dir")

#: Leaves under ``task`` that add measurements without changing the trajectory: the held-in subset the
#: generalization gap is measured on (evaluated in eval mode, no gradient, no training RNG), so a run
#: folder written before the gap existed keeps its hash.
MEASUREMENT_LEAVES = ("heldin_size",)


def _drop_location(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _drop_location(v) for k, v in node.items() if k not in LOCATION_LEAVES + MEASUREMENT_LEAVES}
    return node


def identity_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config (a plain dict or DictConfig) that defines what a run computes."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    identity = {k: v for k, v in container.items() if k not in NON_IDENTITY_KEYS}
    if isinstance(identity.get("task"), Mapping):
        identity["task"] = _drop_location(identity["task"])
    return identity


def config_hash(cfg: Mapping[str, Any], length: int = 10) -> str:
    """Content hash of the identity config: same numbers in, same folder out."""
    canonical = json.dumps(identity_config(cfg), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
