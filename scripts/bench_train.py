"""Training throughput (images/s): each input pipeline against the model-only ceiling, in one run.

For a CIFAR task the real ``ImageClassificationTask`` is built once per pipeline and timed over
whole ``train_step`` calls (data + forward + backward + optimizer step). The ceiling is the same
task's ``train_step`` with the batch fetch replaced by pre-made tensors already on the device:
what the model alone allows. ``overhead = ceiling / pipeline - 1`` (0.15 = the pipeline costs
15% over the model alone). Rounds interleave the candidates so background load hits all alike;
the fastest round (least disturbed by other processes) gives the primary numbers, the median
round is reported beside it.

Other task families add an entry to ``BENCHES`` (name -> function returning a JSON-able dict)
and are selected with ``--only``.

    python scripts/bench_train.py                         # CPU: small model/batch, a couple of minutes
    python scripts/bench_train.py --device cuda --model resnet18 --batch-size 128 --num-workers 8
    python scripts/bench_train.py --device cuda --precision fp32   # IEEE fp32 (TF32 off), as the runs default
    python scripts/bench_train.py --quick --out /tmp/b.json   # seconds (tests)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from optrepro.config import resolve_precision
from optrepro.tasks.base import time_steps

REPO = Path(__file__).resolve().parents[1]
TARGET_OVERHEAD = 0.15  # the target: a pipeline costs at most 15% over the model alone


# ------------------------------------------------------------------------------ machine
def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu_model"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError):
        info["load_average"] = list(os.getloadavg())
    return info


# ------------------------------------------------------------------------------ CIFAR bench
def _cifar_task(args: argparse.Namespace, root: Path, pipeline: str, workers: int, device: torch.device) -> Any:
    from optrepro.tasks.base import RunContext, seed_everything
    from optrepro.tasks.vision import ImageClassificationTask

    task_cfg = OmegaConf.load(REPO / "configs" / "task" / "cifar10_resnet18.yaml")
    task_cfg.pop("defaults")  # the family marker: recipes and profiles are not used here
    task_cfg.name = "cifar10_bench"
    task_cfg.model.name = args.model
    task_cfg.batch_size = args.batch_size
    task_cfg.epochs = 1000  # never reached
    task_cfg.data.update(
        {
            "root": str(root),
            "verify_checksums": args.data_root is not None,
            "download": False,
            "pipeline": pipeline,
            "num_workers": workers,
        }
    )
    cfg = OmegaConf.create({"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "task": task_cfg})
    seed_everything(0)
    ctx = RunContext(cfg=cfg, device=device, precision=args.precision, seed=0)
    return ImageClassificationTask(cfg.task, ctx)


def bench_cifar(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """images/s of the dataloader and device pipelines and of the model alone, for one CIFAR model."""
    from optrepro.data.cifar import write_fake_cifar

    tmp = tempfile.TemporaryDirectory()
    if args.data_root is None:
        root = Path(tmp.name)
        write_fake_cifar(root, "cifar10", n_train=args.n_train, n_test=16, seed=0)
        data = f"fake CIFAR-10 ({args.n_train} images, torchvision format)"
    else:
        root, data = Path(args.data_root), f"CIFAR-10 under {args.data_root}"
    candidates: dict[str, Any] = {
        "dataloader_w0": _cifar_task(args, root, "dataloader", 0, device),
        f"dataloader_w{args.num_workers}": _cifar_task(args, root, "dataloader", args.num_workers, device),
        "device": _cifar_task(args, root, "device", 0, device),
        "model_only": _cifar_task(args, root, "device", 0, device),
    }
    if args.num_workers == 0:
        candidates.pop("dataloader_w0")
    ceiling = candidates["model_only"]
    fixed = [ceiling._next_batch() for _ in range(4)]  # pre-made, normalized, on the device
    calls = {"n": 0}

    def premade() -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += 1
        return fixed[calls["n"] % len(fixed)]

    ceiling._next_batch = premade
    for task in candidates.values():  # warm-up: workers start, cudnn autotunes, caches fill
        time_steps(task.train_step, 0, args.warmup, device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, task in candidates.items():
            times[name].append(time_steps(task.train_step, args.steps, 0, device)[0])
    images = args.steps * args.batch_size
    result: dict[str, Any] = {
        "model": args.model,
        "batch_size": args.batch_size,
        "data": data,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "num_workers": args.num_workers,
        "precision": ceiling.ctx.precision,
        "channels_last": ceiling.channels_last,
        "images_per_s_best": {},
        "images_per_s_median": {},
        "overhead_vs_model_only": {},
        "overhead_vs_model_only_median": {},
    }
    best = {name: images / min(ts) for name, ts in times.items()}
    median = {name: images / statistics.median(ts) for name, ts in times.items()}
    for name in times:
        result["images_per_s_best"][name] = round(best[name], 2)
        result["images_per_s_median"][name] = round(median[name], 2)
        if name != "model_only":
            # best round: the least disturbed by other processes (the primary number on a shared machine)
            result["overhead_vs_model_only"][name] = round(best["model_only"] / best[name] - 1.0, 4)
            result["overhead_vs_model_only_median"][name] = round(median["model_only"] / median[name] - 1.0, 4)
    result["target_overhead"] = TARGET_OVERHEAD
    result["meets_target"] = {k: v <= TARGET_OVERHEAD for k, v in result["overhead_vs_model_only"].items()}
    tmp.cleanup()  # the tasks hold the images in memory, not the files
    return result


def bench_lm(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Tokens/s of the AWD-LSTM training step against its model-only ceiling."""
    from optrepro.tasks.language_model import benchmark_tokens_per_second

    return benchmark_tokens_per_second(quick=args.quick, device=str(device))


def bench_mt(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Target tokens/s of the Transformer training step against its model-only ceiling (CPU-sized model)."""
    from optrepro.tasks.translation import benchmark_tokens_per_second

    return benchmark_tokens_per_second(quick=args.quick)


#: name -> bench function(args, device) -> JSON-able dict; other task families add theirs here
BENCHES: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "cifar": bench_cifar,
    "lm": bench_lm,
    "mt": bench_mt,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="CIFAR model (default: vgg11 on CPU, resnet18 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 128 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None, help="default: 1 on CPU, 8 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--n-train", type=int, default=2048, help="fake training images")
    parser.add_argument("--data-root", default=None, help="real CIFAR-10 root instead of fake data")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="CIFAR autocast precision; auto = bf16 on a CUDA device that supports it, else fp32 (fp32 turns TF32 off)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a test (numbers meaningless)")
    parser.add_argument("--out", default=None, help="JSON path (default results/bench/train_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or ("resnet18" if cuda else "vgg11")
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.steps = args.steps or (50 if cuda else 3)
    args.num_workers = args.num_workers if args.num_workers is not None else (8 if cuda else 1)
    if args.precision == "auto":
        args.precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    resolve_precision(args.precision, device)  # the runs' matmul policy: fp32 means no TF32
    if args.quick:
        args.batch_size, args.steps, args.rounds, args.warmup, args.n_train = 2, 1, 1, 0, 32
    unknown = [n for n in args.only.split(",") if n not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {unknown[0]}; choose from {', '.join(BENCHES)}")
    record: dict[str, Any] = {
        "script": "scripts/bench_train.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "machine": machine_info(device),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "benches": {},
    }
    for name in args.only.split(","):
        print(f"bench {name} on {device} ...", file=sys.stderr, flush=True)
        record["benches"][name] = BENCHES[name](args, device)
        print(json.dumps(record["benches"][name], indent=1), file=sys.stderr, flush=True)
    out = Path(args.out) if args.out else REPO / "results" / "bench" / f"train_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
