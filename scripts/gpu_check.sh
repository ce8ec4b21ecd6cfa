#!/usr/bin/env bash
# Every CUDA path of optrepro in one command, within 8 minutes on one H200; JSON under the given folder.
#
#   bash scripts/gpu_check.sh results/bench/gpu        (or: make gpu-check [OUT=...])
#
# OUT_DIR is taken relative to the caller's folder; the steps run from the repo root.
#
# Steps, each under `timeout` and never more than the budget left (GPU_CHECK_BUDGET_S, default 460 s,
# counted from the script's start, so start-up and the install below are inside it):
#   startup, install  import hydra, optrepro.train; the wheelhouse install when that fails (see Python: below)
#   optim_bench       scripts/bench_optim.py on CUDA: ResNet-34 shapes, our foreach and fused
#                     (torch.compile) steps against torch's foreach and fused Adam -> optim_cuda.json
#                     (the only torch.compile path: the tasks never compile the model)
#   train_fp32/bf16   scripts/bench_train.py --device cuda: DataLoader vs device-resident pipeline vs
#                     model alone, ResNet-18, channels_last (auto on CUDA) -> train_cuda_{fp32,bf16}.json
#   cifar_*           one epoch of cifar10_resnet18 through `python -m optrepro.train` on fake full-size
#                     CIFAR-10 (50k/10k, torchvision's on-disk format, in a temp dir) -> cifar10_resnet18_epoch.json
#   population*       8 digits_cnn runs (4 ablation corners x 2 seeds) as one population on CUDA
#                     (hydra/launcher=population) -> population_digits_cnn.json (each member's summary);
#                     then scripts/bench_population.py --device cuda (digits K=1,8 and ResNet-18 on fake
#                     full-size CIFAR K=1,8; the 8-process comparison is the full bench, outside this budget)
#   pytest_gpu        pytest -m gpu -> pytest_gpu.json (counts and failed test ids)
# <out>/gpu_check.json records every step (name, command, rc, wall seconds, its JSON, its log in
# <out>/logs/) as soon as it ends; a failed step does not stop the others; exit 1 if any failed.
# Without CUDA: one line saying so, exit 0, nothing written.
# Python: $OPTREPRO_PYTHON, else the repo's .venv/bin/python, else python3; the checkout's src/ comes
# first on PYTHONPATH, so the code checked is this checkout's.
# If that Python cannot import hydra, optrepro.train (the lent machine's image has torch but no hydra-core,
# omegaconf, ...), the wheels in $GPU_CHECK_WHEELS (default <repo>/.gpu-wheels, from `make gpu-wheels`)
# are installed first with pip --no-index --no-deps --target into $GPU_CHECK_SITE (default a temp
# folder, removed at exit) and that folder goes on PYTHONPATH after src/; --no-deps keeps pip from
# touching the image's torch. start-up and install are timed, recorded and inside the budget.
set -u -o pipefail

T_START=$(date +%s)
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "error: usage: bash scripts/gpu_check.sh OUT_DIR (e.g. results/bench/gpu)" >&2
    exit 2
fi
case "$1" in
    /*) OUT_ARG="$1" ;;
    *) OUT_ARG="$PWD/$1" ;;  # relative to where it was called from, not to the repo
esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
if [ -n "${OPTREPRO_PYTHON:-}" ]; then
    PY="$OPTREPRO_PYTHON"
elif [ -x .venv/bin/python ]; then
    PY="$REPO/.venv/bin/python"
else
    PY=python3
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PROBE=(-c 'import hydra, optrepro.train')  # train imports hydra only in main()

# start-up: the interpreter, torch and everything the runs import
t0=$(now)
"$PY" "${PROBE[@]}" >"$TMP/startup.log" 2>&1
STARTUP_RC=$?
STARTUP_WALL=$(secs "$t0" "$(now)")
INSTALL_RC="" INSTALL_LINE=""
if [ "$STARTUP_RC" -ne 0 ]; then
    WHEELS="${GPU_CHECK_WHEELS:-$REPO/.gpu-wheels}"
    SITE="${GPU_CHECK_SITE:-$TMP/site}"
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "error: $PY cannot import hydra, optrepro.train ($(tail -n 1 "$TMP/startup.log")) and $WHEELS holds no" \
            "wheels; run make gpu-wheels where pip works and carry .gpu-wheels (or make setup)" >&2
        exit 2
    fi
    t0=$(now)
    {
        "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" \
            "$WHEELS"/*.whl && PYTHONPATH="$SITE:$PYTHONPATH" "$PY" scripts/gpu_wheels.py check "$SITE"
    } >"$TMP/install.log" 2>&1
    INSTALL_RC=$?
    INSTALL_WALL=$(secs "$t0" "$(now)")
    export PYTHONPATH="$REPO/src:$SITE${PYTHONPATH#"$REPO/src"}"
    INSTALL_LINE="gpu_check: install rc=$INSTALL_RC ${INSTALL_WALL}s ($(compgen -G "$WHEELS/*.whl" | wc -l) wheels"
    INSTALL_LINE+=" from $WHEELS -> $SITE)"
    if ! "$PY" "${PROBE[@]}" >>"$TMP/install.log" 2>&1; then
        echo "$INSTALL_LINE"
        echo "error: $PY cannot import hydra, optrepro.train even after installing $WHEELS:" \
            "$(tail -n 1 "$TMP/install.log"); rebuild it with make gpu-wheels" >&2
        exit 2
    fi
fi

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null
probe=$?
if [ "$probe" -eq 3 ]; then
    [ -z "$INSTALL_LINE" ] || echo "$INSTALL_LINE"
    echo "gpu_check: no CUDA device here; nothing to check (run it on a GPU machine)"
    exit 0
elif [ "$probe" -ne 0 ]; then
    echo "error: $PY cannot import torch (rc $probe); install the environment first (make setup)" >&2
    exit 2
fi

mkdir -p "$OUT_ARG/logs" || exit 2
OUT="$(cd "$OUT_ARG" && pwd)"
RECORD="$OUT/gpu_check.json"
BUDGET_S="${GPU_CHECK_BUDGET_S:-460}"
FAILED=0

"$PY" scripts/gpu_check_util.py start "$RECORD" || exit 2
cp "$TMP/startup.log" "$OUT/logs/startup.log"
# start-up failing is what triggers the install: its rc is informative, not a failure
"$PY" scripts/gpu_check_util.py record "$RECORD" --name startup --rc 0 --wall "$STARTUP_WALL" --limit 0 \
    --log "$OUT/logs/startup.log" --note "import hydra, optrepro.train rc=$STARTUP_RC" -- "$PY" "${PROBE[@]}" ||
    { echo "gpu_check: could not record step startup" >&2; FAILED=1; }
echo "gpu_check: startup ${STARTUP_WALL}s (import hydra, optrepro.train rc=$STARTUP_RC)"
if [ -n "$INSTALL_RC" ]; then
    cp "$TMP/install.log" "$OUT/logs/install.log"
    "$PY" scripts/gpu_check_util.py record "$RECORD" --name install --rc "$INSTALL_RC" --wall "$INSTALL_WALL" \
        --limit 0 --log "$OUT/logs/install.log" --note "$WHEELS -> $SITE" -- \
        "$PY" -m pip install --no-index --no-deps --target "$SITE" "$WHEELS/*.whl" ||
        { echo "gpu_check: could not record step install" >&2; FAILED=1; }
    echo "$INSTALL_LINE"
    [ "$INSTALL_RC" -eq 0 ] || FAILED=1
fi

# step NAME LIMIT_S JSON_PATH CMD... : run CMD under timeout (capped by the budget left), log to
# <out>/logs/NAME.log, append the outcome to the record; never exits the script.
step() {
    local name=$1 limit=$2 json=$3
    shift 3
    local log="$OUT/logs/$name.log" left rc note=""
    left=$((BUDGET_S - ($(date +%s) - T_START)))
    if [ "$left" -lt 5 ]; then
        rc=124 note="not run: the ${BUDGET_S} s budget is spent"
        echo "$note" >"$log"
        "$PY" scripts/gpu_check_util.py record "$RECORD" --name "$name" --rc "$rc" --wall 0 --limit 0 \
            --log "$log" --note "$note" -- "$@" || echo "gpu_check: could not record step $name" >&2
        echo "gpu_check: $name $note"
        FAILED=1
        return 0
    fi
    if [ "$left" -lt "$limit" ]; then
        limit=$left note="limit cut to the budget left"
    fi
    local t0 t1
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    [ -e "$json" ] || json=""
    "$PY" scripts/gpu_check_util.py record "$RECORD" --name "$name" --rc "$rc" --wall "$wall" --limit "$limit" \
        ${json:+--json "$json"} --log "$log" ${note:+--note "$note"} -- "$@" ||
        { echo "gpu_check: could not record step $name" >&2; FAILED=1; }
    [ "$rc" -eq 0 ] || FAILED=1
    echo "gpu_check: $name rc=$rc ${wall}s${json:+ -> $json}"
}

# (a) optimizer step on CUDA: foreach and fused (one torch.compile) against torch's Adam
step optim_bench 100 "$OUT/optim_cuda.json" \
    "$PY" scripts/bench_optim.py --device cuda --sets resnet34_cifar \
    --candidates torch_adam_foreach,torch_adam_fused,adabelief_pytorch_0.2.1,adabelief_foreach,adabelief_fused \
    --rounds 20 --warmup 3 --out "$OUT/optim_cuda.json"

# (b) training throughput: DataLoader vs device pipeline vs model alone, fp32 (TF32 off) and bf16
for precision in fp32 bf16; do
    step "train_$precision" 45 "$OUT/train_cuda_$precision.json" \
        "$PY" scripts/bench_train.py --device cuda --only cifar --precision "$precision" \
        --steps 20 --rounds 3 --warmup 2 --n-train 4096 --out "$OUT/train_cuda_$precision.json"
done

# (c) one real epoch of cifar10_resnet18 on fake full-size CIFAR-10 (the tests' writer, real format)
step cifar_fake_data 40 "" \
    "$PY" scripts/gpu_check_util.py fake-cifar "$TMP/cifar" --n-train 50000 --n-test 10000
step cifar_epoch 100 "" \
    "$PY" -m optrepro.train task=cifar10_resnet18 optimizer=adabelief seed=0 device=cuda task.epochs=1 \
    task.data.root="$TMP/cifar" task.data.download=false task.data.verify_checksums=false \
    results_dir="$TMP/cifar_runs" progress=false wandb.mode=disabled
step cifar_epoch_collect 15 "$OUT/cifar10_resnet18_epoch.json" \
    "$PY" scripts/gpu_check_util.py runs "$TMP/cifar_runs" "$OUT/cifar10_resnet18_epoch.json" --expect 1

# (d) a population of 8 on CUDA, then the population benchmark when it exists
step population 50 "" \
    "$PY" -m optrepro.train -m hydra/launcher=population task=digits_cnn \
    optimizer=ablation_adam,ablation_eadam,ablation_belief_outside,ablation_belief_inside seed=0,1 \
    device=cuda results_dir="$TMP/population_runs" progress=false wandb.mode=disabled
step population_collect 15 "$OUT/population_digits_cnn.json" \
    "$PY" scripts/gpu_check_util.py runs "$TMP/population_runs" "$OUT/population_digits_cnn.json" --expect 8 \
    --log "$OUT/logs/population.log"
if [ -f scripts/bench_population.py ]; then
    step population_bench 70 "$OUT/population_cuda.json" \
        "$PY" scripts/bench_population.py --device cuda --tasks digits_cnn --sizes 1,8 --rounds 1 --no-e2e \
        --out "$OUT/population_cuda.json"
else
    echo "gpu_check: population_bench skipped: scripts/bench_population.py does not exist"
    "$PY" scripts/gpu_check_util.py skip "$RECORD" population_bench "scripts/bench_population.py does not exist"
fi

# (e) the GPU-marked tests
step pytest_gpu 60 "$OUT/pytest_gpu.xml" \
    "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"
step pytest_gpu_counts 10 "$OUT/pytest_gpu.json" \
    "$PY" scripts/gpu_check_util.py pytest-counts "$OUT/pytest_gpu.xml" "$OUT/pytest_gpu.json"

"$PY" scripts/gpu_check_util.py finish "$RECORD" || FAILED=1
echo "gpu_check: $( [ "$FAILED" -eq 0 ] && echo "all steps passed" || echo "FAILED steps (see $RECORD)" ) in $(($(date +%s) - T_START)) s -> $RECORD"
exit "$FAILED"
