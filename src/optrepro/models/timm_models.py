"""Pretrained image models from timm, for fine-tuning (``task.model.source=timm``).

Why timm: one call builds ViT-B/16 and ResNet-50 with their pretrained weights, a new classifier head of
``num_classes`` outputs (the pretrained head is dropped when its size differs), and each checkpoint's own
input normalisation (``pretrained_cfg`` mean/std). Weights come from the HF hub (timm's download), from the
local HF cache only (``task.data.download=false``: never downloads) or from a local file
(``task.model.checkpoint``: a ``state_dict`` saved with ``torch.save`` or a safetensors file), which goes
through the same timm loader (head dropped, position embeddings resampled to ``img_size``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from optrepro.errors import DataMissingError, UserError

#: the files timm looks for in a hub repository, in its order
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
#: the checkpoints of the vision fine-tuning tasks (configs/task/cifar10_*_ft.yaml)
FINETUNE_MODELS = ("vit_base_patch16_224.orig_in21k", "resnet50.tv_in1k")


def _cached_weights(hub_id: str) -> str:
    """The pretrained file of ``hub_id`` from the local HF cache, or a one-line DataMissingError."""
    from huggingface_hub import hf_hub_download

    for filename in HUB_FILES:
        try:
            return str(hf_hub_download(hub_id, filename, local_files_only=True))
        except Exception:  # noqa: BLE001 - huggingface_hub raises several kinds for "not in the cache"
            continue
    raise DataMissingError(f"timm weights {hub_id} are not in the local HF cache; fetch them once with "
                           f"python -m optrepro.models.timm_models {hub_id.removeprefix('timm/')} "
                           f"(or set task.data.download=true)")


def build_timm_model(name: str, num_classes: int, pretrained: bool, checkpoint: str | None,
                     kwargs: Mapping[str, Any], download: bool = True) -> nn.Module:
    """``timm.create_model(name, num_classes=...)`` with pretrained weights from the hub, the cache or a file."""
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"task.model.name={name} is not a timm model (timm.list_models() lists them)")
    kw = dict(kwargs)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise DataMissingError(f"task.model.checkpoint={checkpoint}: no such file")
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay={"file": str(path)}, **kw)
    if pretrained and not download:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id or f"timm/{name}"
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay={"file": _cached_weights(hub_id)}, **kw)
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kw)


def model_norm_stats(name: str) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std the weights of timm model ``name`` were trained with (its ``pretrained_cfg``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        raise UserError(f"task.data.normalize=model: timm has no mean/std for {name} (use normalize=dataset)")
    return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)


def main(argv: list[str] | None = None) -> None:
    """Fetch pretrained timm weights into the HF cache (once, with network), for runs with download=false."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="*", default=list(FINETUNE_MODELS), help="timm model names with their tag")
    import timm

    for name in parser.parse_args(argv).names:
        timm.create_model(name, pretrained=True)
        print(f"{name}: in the HF cache")


__all__ = ["FINETUNE_MODELS", "build_timm_model", "main", "model_norm_stats"]


if __name__ == "__main__":
    main()
