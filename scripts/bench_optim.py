"""Time one optimizer step on real parameter sets; write a table and a JSON record.

Parameter sets (shapes only, no model code): ResNet-34 for CIFAR (3x3 stem, no maxpool, 10 classes,
21.3M params) and the IWSLT14 Transformer (transformer_iwslt_de_en: 6+6 layers, d 512, ffn 1024,
10k vocab per side, decoder input/output embedding shared; 41.6M params). Candidates: torch.optim.Adam
(foreach, fused), adabelief-pytorch 0.2.1 (the reference package) and ours (AdaBelief, EAdam and the
ablation's belief/inside corner; foreach and fused). A third set, ``resnet34_cifar_training_loop``,
gives every candidate its own ResNet-34 and runs zero_grad + forward + backward (untimed) before
each timed step, so the step is measured inside the heap of a real training loop. Candidates named
``<name>+diag`` are ``<name>`` with the optimizer diagnostics on at the default sample (65,536
coordinates); their ratio to ``<name>`` in the same run is the diagnostics' overhead (``--diagnostics``
times only those pairs).

Timing: all candidates of a parameter set live side by side and share one set of random gradients;
after warm-up (which includes torch.compile for fused), rounds run every candidate once in turn
(interleaved, so load from other processes hits all of them alike) and the median over rounds is
reported, with the spread.

Memory ("extra" = beyond params, grads and optimizer state): on CUDA, max_memory_allocated during
one step minus memory allocated before it. On CPU, an allocation counter: the torch profiler's
memory events (every allocation and free by torch's CPU allocator) replayed in order for one warm
step, peak of the running sum; plus persistent non-state buffers (our foreach workspace). RSS is
not used: the C allocator's caching makes it meaningless for a single step.

Page faults (CPU): a step that allocates temporaries (torch foreach Adam, the reference package) can
pay a page fault per 4 kB of them when glibc hands freed memory back to the OS between steps. In a
standalone loop of optimizer steps that is what glibc's default settings do (the reference's
ResNet-34 step then takes ~50k faults and 2-3x longer); inside a training loop the forward/backward
allocations keep most of the heap populated (measured on this machine, ResNet-34 CIFAR training loop:
0 to 2.3k faults/step for adabelief-pytorch across runs, against ~48k standalone). ``--malloc warm`` (default)
reproduces the training-loop regime deterministically by telling glibc to keep freed memory
(mallopt: mmap threshold 32 MiB, trim threshold 1 GiB); ``--malloc default`` leaves glibc alone.
Each candidate's minor page faults per step are recorded either way.

    python scripts/bench_optim.py [--quick] [--diagnostics] [--device cpu|cuda] [--threads N] [--malloc warm|default]
                                  [--out results/bench/optim_cpu.json]

On a shared machine other processes inflate every number; the interleaved rounds keep the ratios
comparable, ``--threads 1`` makes them far less sensitive to the load (no OpenMP barrier waiting on
a descheduled thread), and ``machine.loadavg_*`` in the JSON records how busy the machine was.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import io
import json
import math
import os
import platform
import resource
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from optrepro.optim import AdaBelief, AdamFamily, EAdam
from optrepro.optim.diagnostics import DEFAULT_SAMPLE

Shapes = list[tuple[int, ...]]

TARGETS = {
    "foreach_vs_torch_adam_foreach": 1.3,  # ours foreach <= 1.3x torch foreach Adam
    "fused_vs_torch_adam_fused": 1.2,  # ours fused <= 1.2x torch fused Adam
    "reference_vs_fused": 5.0,  # ours fused >= 5x faster than adabelief-pytorch 0.2.1
    "diagnostics_overhead": 1.03,  # diagnostics on <= 1.03x the same optimizer with them off
}


# ----------------------------------------------------------------------------------------------
# parameter shapes
# ----------------------------------------------------------------------------------------------


def resnet34_cifar_shapes(num_classes: int = 10) -> Shapes:
    """kuangliu-style CIFAR ResNet-34: 3x3 stem conv (no bias) + BN, [3, 4, 6, 3] BasicBlocks, linear."""
    shapes: Shapes = [(64, 3, 3, 3), (64,), (64,)]
    in_planes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            shapes += [(planes, in_planes, 3, 3), (planes,), (planes,)]
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]
            if block_stride != 1 or in_planes != planes:
                shapes += [(planes, in_planes, 1, 1), (planes,), (planes,)]
            in_planes = planes
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def transformer_iwslt_shapes(vocab_src: int = 10_000, vocab_tgt: int = 10_000) -> Shapes:
    """fairseq transformer_iwslt_de_en (post-norm: no final layer norms), shared decoder embedding."""
    d, ffn = 512, 1024

    def attention() -> Shapes:
        return [(d, d), (d,)] * 4  # q, k, v, out projections

    def layer_norm() -> Shapes:
        return [(d,), (d,)]

    def feed_forward() -> Shapes:
        return [(ffn, d), (ffn,), (d, ffn), (d,)]

    shapes: Shapes = [(vocab_src, d)]
    for _ in range(6):
        shapes += attention() + layer_norm() + feed_forward() + layer_norm()
    shapes += [(vocab_tgt, d)]  # also the output projection
    for _ in range(6):
        shapes += attention() + layer_norm() + attention() + layer_norm() + feed_forward() + layer_norm()
    return shapes


def quick_shapes() -> Shapes:
    return [(32, 3, 3, 3), (32,), (32,), (64, 32, 3, 3), (64,), (10, 64), (10,)]


# ----------------------------------------------------------------------------------------------
# the C allocator
# ----------------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
WARM_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
WARM_TRIM_THRESHOLD = 1 << 30


def configure_malloc(mode: str) -> dict[str, Any]:
    """Set glibc's malloc for the run ("warm": keep freed memory, as a training loop's heap does;
    "default": leave it) and say what was done, for the JSON record."""
    if mode == "default":
        return {"mode": "default"}
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, WARM_MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, WARM_TRIM_THRESHOLD)
        )
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        print(f"warning: mallopt unavailable ({libc_name}); --malloc warm had no effect", file=sys.stderr)
        return {"mode": "default", "requested": "warm", "mallopt": "unavailable"}
    return {"mode": "warm", "mmap_threshold": WARM_MMAP_THRESHOLD, "trim_threshold": WARM_TRIM_THRESHOLD}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


ADAM_STEP_BYTES = 28  # fp32: read param, grad, m, v; write param, m, v


def memory_floor(numel: int, device: torch.device, rounds: int) -> dict[str, float]:
    """Memory bandwidth from an in-place add over ``numel`` floats (12 bytes each), and the time an
    fp32 Adam-family step's 28 bytes per parameter take at that rate: a rough floor (the measured
    bandwidth itself varies by ~20% between runs on a shared machine)."""
    a = torch.zeros(numel, device=device)
    b = torch.ones(numel, device=device)
    a.add_(b)
    times = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        a.add_(b)
        _sync(device)
        times.append(time.perf_counter() - start)
    gb_per_s = 12 * numel / statistics.median(times) / 1e9
    return {"inplace_add_gb_per_s": gb_per_s, "adam_step_floor_ms": ADAM_STEP_BYTES * numel / gb_per_s / 1e6}


# ----------------------------------------------------------------------------------------------
# candidates
# ----------------------------------------------------------------------------------------------


def _with_diagnostics(opt: AdaBelief | AdamFamily) -> torch.optim.Optimizer:
    opt.enable_diagnostics(sample=DEFAULT_SAMPLE, seed=0)
    return opt


def _reference_adabelief(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    from adabelief_pytorch import AdaBelief as ReferenceAdaBelief

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints banners
        return ReferenceAdaBelief(params, print_change_log=False)


CANDIDATES: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "torch_adam_foreach": lambda ps: torch.optim.Adam(ps, foreach=True),
    "torch_adam_fused": lambda ps: torch.optim.Adam(ps, fused=True),
    "adabelief_pytorch_0.2.1": _reference_adabelief,
    "adabelief_foreach": lambda ps: AdaBelief(ps),
    "adabelief_fused": lambda ps: AdaBelief(ps, fused=True),
    "eadam_foreach": lambda ps: EAdam(ps),
    "eadam_fused": lambda ps: EAdam(ps, fused=True),
    "ablation_belief_inside_foreach": lambda ps: AdamFamily(
        ps, second_moment="belief", eps_placement="inside", eps=1e-8
    ),
    # optimizer diagnostics on (default sample): compared with the same candidate without them
    "adabelief_foreach+diag": lambda ps: _with_diagnostics(AdaBelief(ps)),
    "adabelief_fused+diag": lambda ps: _with_diagnostics(AdaBelief(ps, fused=True)),
    "ablation_belief_inside_foreach+diag": lambda ps: _with_diagnostics(
        AdamFamily(ps, second_moment="belief", eps_placement="inside", eps=1e-8)
    ),
}
DIAGNOSTICS = ",".join(
    f"{name}{suffix}"
    for name in ("adabelief_foreach", "adabelief_fused", "ablation_belief_inside_foreach")
    for suffix in ("", "+diag")
)


# --quick compiles one fused kernel only (each torch.compile costs seconds)
QUICK = ",".join(
    ["torch_adam_foreach", "torch_adam_fused", "adabelief_pytorch_0.2.1", "adabelief_foreach", "adabelief_fused"]
    + ["eadam_foreach"]
)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(v.numel() * v.element_size() for v in tensors)


def persistent_extra_bytes(opt: torch.optim.Optimizer) -> int:
    workspaces = getattr(opt, "_workspaces", {})
    return sum(w.numel() * w.element_size() for w in workspaces.values())


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Silence the profiler's native start/stop log lines (written to fd 2, below Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_bytes(opt: torch.optim.Optimizer, device: torch.device) -> int:
    """Peak bytes allocated by torch during one step on top of what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    # Kineto's "[memory]" events: one per allocation (+bytes) and free (-bytes) by torch's allocator.
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# A workload makes one candidate's parameters and says how to refresh their gradients before each
# timed step (None: the gradients stay fixed).
Workload = Callable[[], tuple[list[torch.nn.Parameter], Callable[[], None] | None]]


def fixed_gradients(shapes: Shapes, device: torch.device) -> Workload:
    """Parameters of the given shapes; every candidate shares one set of random gradients."""
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=generator).to(device) for s in shapes]
    initial = [torch.randn(s, generator=generator).to(device) for s in shapes]

    def make() -> tuple[list[torch.nn.Parameter], None]:
        params = [torch.nn.Parameter(x.clone()) for x in initial]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return params, None

    return make


def resnet34_training_loop(device: torch.device, batch_size: int = 16) -> Workload:
    """A ResNet-34 (CIFAR) per candidate; before each step zero_grad + forward + backward on one
    fixed batch, as a training loop does (untimed: only the step is timed)."""
    from optrepro.models.cifar import resnet34

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)

    def make() -> tuple[list[torch.nn.Parameter], Callable[[], None]]:
        torch.manual_seed(0)
        model = resnet34().to(device)

        def forward_backward() -> None:
            model.zero_grad()  # set_to_none, as torch's default: backward allocates fresh grads
            torch.nn.functional.cross_entropy(model(images), labels).backward()

        forward_backward()
        return list(model.parameters()), forward_backward

    return make


def bench_param_set(
    workload: Workload, names: list[str], device: torch.device, rounds: int, warmup: int
) -> dict[str, Any]:
    opts: dict[str, torch.optim.Optimizer] = {}
    refreshers: dict[str, Callable[[], None] | None] = {}
    compile_s: dict[str, float] = {}
    shapes: Shapes = []
    for name in names:
        params, refresh = workload()
        shapes = [tuple(p.shape) for p in params]
        opt = CANDIDATES[name](params)
        _sync(device)
        start = time.perf_counter()
        opt.step()  # state init, and compilation for fused
        _sync(device)
        compile_s[name] = time.perf_counter() - start
        for _ in range(warmup):
            if refresh is not None:
                refresh()
            opt.step()
        opts[name] = opt
        refreshers[name] = refresh

    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, opt in opts.items():
            refresh = refreshers[name]
            if refresh is not None:
                refresh()
            _sync(device)
            faults_before = minor_faults()
            start = time.perf_counter()
            opt.step()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
            faults[name].append(minor_faults() - faults_before)

    results: dict[str, Any] = {}
    for name, opt in opts.items():
        ts = sorted(times[name])
        results[name] = {
            "ms_median": statistics.median(ts),
            "ms_min": ts[0],
            "ms_p25": ts[len(ts) // 4],
            "ms_p75": ts[(3 * len(ts)) // 4],
            "first_step_s": compile_s[name],
            "minor_faults_per_step": statistics.median(faults[name]),
            "state_bytes": state_bytes(opt),
            "persistent_extra_bytes": persistent_extra_bytes(opt),
            "peak_step_alloc_bytes": peak_step_bytes(opt, device),
        }
        results[name]["peak_extra_bytes"] = (
            results[name]["peak_step_alloc_bytes"] + results[name]["persistent_extra_bytes"]
        )
    del opts
    numel = sum(math.prod(s) for s in shapes)
    return {
        "numel": numel,
        "memory_floor": memory_floor(numel, device, rounds),
        "n_tensors": len(shapes),
        "param_bytes": numel * 4,
        "largest_param_bytes": max(math.prod(s) for s in shapes) * 4,
        "candidates": results,
        "ratios": ratios(results),
    }


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Ours vs baselines on the median step time (the verdict) and on the fastest step (the least
    disturbed by other processes on a shared machine)."""

    def time_of(name: str, stat: str) -> float | None:
        return results[name][stat] if name in results else None

    out: dict[str, Any] = {}
    pairs = [
        ("adabelief_foreach", "torch_adam_foreach", "foreach_vs_torch_adam_foreach"),
        ("eadam_foreach", "torch_adam_foreach", "foreach_vs_torch_adam_foreach"),
        ("ablation_belief_inside_foreach", "torch_adam_foreach", "foreach_vs_torch_adam_foreach"),
        ("adabelief_fused", "torch_adam_fused", "fused_vs_torch_adam_fused"),
        ("eadam_fused", "torch_adam_fused", "fused_vs_torch_adam_fused"),
    ]
    pairs += [(f"{name}+diag", name, "diagnostics_overhead")
              for name in ("adabelief_foreach", "adabelief_fused", "ablation_belief_inside_foreach")]
    for ours, base, target in pairs:
        if time_of(ours, "ms_median") and time_of(base, "ms_median"):
            ratio = time_of(ours, "ms_median") / time_of(base, "ms_median")
            ratio_min = time_of(ours, "ms_min") / time_of(base, "ms_min")
            limit = TARGETS[target]
            out[f"{ours}/{base}"] = {"ratio": ratio, "ratio_min": ratio_min, "target_max": limit, "met": ratio <= limit}
    base = "adabelief_pytorch_0.2.1"
    for ours in ("adabelief_fused", "adabelief_foreach"):
        if time_of(ours, "ms_median") and time_of(base, "ms_median"):
            speedup = time_of(base, "ms_median") / time_of(ours, "ms_median")
            speedup_min = time_of(base, "ms_min") / time_of(ours, "ms_min")
            limit = TARGETS["reference_vs_fused"]
            met = speedup >= limit if ours.endswith("fused") else None
            out[f"{base}/{ours}"] = {"speedup": speedup, "speedup_min": speedup_min, "target_min": limit, "met": met}
    return out


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(Exception):
        import adabelief_pytorch

        info["adabelief_pytorch_version"] = getattr(adabelief_pytorch, "__version__", "0.2.1")
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = os.getloadavg()
    return info


def print_table(param_sets: dict[str, Any]) -> None:
    for set_name, data in param_sets.items():
        floor = data["memory_floor"]
        print(
            f"\n{set_name}: {data['numel'] / 1e6:.2f}M params in {data['n_tensors']} tensors; memory bandwidth "
            f"(in-place add) {floor['inplace_add_gb_per_s']:.0f} GB/s, so an fp32 Adam-family step "
            f"({ADAM_STEP_BYTES} B/param) needs ~{floor['adam_step_floor_ms']:.1f} ms at that rate"
        )
        columns = ("ms/step", 9), ("[p25-p75]", 17), ("first step s", 12), ("peak extra MB", 13), ("faults", 7)
        header = f"{'candidate':32s} " + " ".join(f"{title:>{width}s}" for title, width in columns)
        print(header)
        print("-" * len(header))
        for name, r in data["candidates"].items():
            spread = f"[{r['ms_p25']:.1f}-{r['ms_p75']:.1f}]"
            print(
                f"{name:32s} {r['ms_median']:9.2f} {spread:>17s} {r['first_step_s']:12.2f} "
                f"{r['peak_extra_bytes'] / 2**20:13.1f} {r['minor_faults_per_step']:7.0f}"
            )
        for key, r in data["ratios"].items():
            if "ratio" in r:
                verdict = "met" if r["met"] else "NOT met"
                print(
                    f"  {key:56s} {r['ratio']:5.2f}x time (fastest steps {r['ratio_min']:5.2f}x)"
                    f"  target <= {r['target_max']}x: {verdict}"
                )
            else:
                verdict = "" if r["met"] is None else ("met" if r["met"] else "NOT met")
                print(
                    f"  {key:56s} {r['speedup']:5.2f}x faster (fastest steps {r['speedup_min']:5.2f}x)"
                    f"  target >= {r['target_min']}x {verdict}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few rounds (smoke test)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=None, help="timed steps per candidate")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first")
    parser.add_argument(
        "--sets",
        default="resnet34_cifar,transformer_iwslt",
        help="comma-separated: resnet34_cifar, transformer_iwslt, resnet34_cifar_training_loop",
    )
    parser.add_argument("--candidates", default=None, help=f"comma-separated (default all; --quick: {QUICK})")
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help=f"only the diagnostics on/off pairs ({DIAGNOSTICS}): their overhead",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--malloc",
        default="warm",
        choices=["warm", "default"],
        help="glibc malloc: 'warm' keeps freed memory as a training loop's heap does (default); 'default' leaves it",
    )
    parser.add_argument("--out", default="results/bench/optim_cpu.json")
    args = parser.parse_args(argv)
    malloc = configure_malloc(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    default = DIAGNOSTICS if args.diagnostics else (QUICK if args.quick else ",".join(CANDIDATES))
    names = [n for n in (args.candidates or default).split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    try:
        import adabelief_pytorch  # noqa: F401
    except ImportError:
        print("adabelief-pytorch not installed: skipping the reference candidate", file=sys.stderr)
        names = [n for n in names if n != "adabelief_pytorch_0.2.1"]

    all_sets: dict[str, Callable[[], Workload]] = {
        "resnet34_cifar": lambda: fixed_gradients(resnet34_cifar_shapes(), device),
        "transformer_iwslt": lambda: fixed_gradients(transformer_iwslt_shapes(), device),
        "resnet34_cifar_training_loop": lambda: resnet34_training_loop(device),
    }
    if args.quick:
        sets = {"quick": fixed_gradients(quick_shapes(), device)}
        rounds, warmup = args.rounds or 5, args.warmup or 1
    else:
        set_names = [n for n in args.sets.split(",") if n]
        unknown_sets = [n for n in set_names if n not in all_sets]
        if unknown_sets:
            parser.error(f"unknown sets {unknown_sets}; choose from {list(all_sets)}")
        sets = {name: all_sets[name]() for name in set_names}
        rounds, warmup = args.rounds or 30, args.warmup or 3

    warnings.filterwarnings("ignore", category=UserWarning)
    record: dict[str, Any] = {
        "machine": machine(device),
        "settings": {
            "quick": args.quick,
            "rounds": rounds,
            "warmup": warmup,
            "candidates": names,
            "malloc": malloc,
        },
        "memory_method": (
            "cuda max_memory_allocated minus allocated before the step"
            if device.type == "cuda"
            else "torch profiler CPU allocation events of one warm step (peak running sum) "
            "+ persistent non-state buffers"
        ),
        "targets": TARGETS,
        "param_sets": {},
    }
    for set_name, workload in sets.items():
        print(f"benchmarking {set_name} ...", file=sys.stderr, flush=True)
        record["param_sets"][set_name] = bench_param_set(workload, names, device, rounds, warmup)
    with contextlib.suppress(OSError):
        record["machine"]["loadavg_at_end"] = os.getloadavg()
    print_table(record["param_sets"])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
