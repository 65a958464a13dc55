#!/usr/bin/env bash
# Issue 24's device run in one script: the CUDA smoke test (tests/gpu), then `bench.bench_gpu` at full
# size, both on one set of full-size random-weight models built once; everything lands under $OUT
# (bench_gpu.json, bench_gpu.md, smoke.log, bench.log, nvidia-smi.txt). Sized to finish within 10
# minutes on one H100 or H200, building the models included: the smoke test gets 200 s, the bench 350 s
# (it saves its result after each part, so a cut-short run keeps the parts done; torch.compile runs last);
# a step that fails or runs past its time is named in $OUT/status.txt and the script exits 1.
#
# 1. Here, once, in the repository root (a machine with pip and a network): the Python packages the
#    device image lacks, as wheels for its Python 3.12, into .whl/ (in .gitignore; under the 64 MiB a
#    device call carries). Ray (~70 MB) is not among them: nothing below imports it.
#        bash bench/gpu_device_run.sh --prepare-wheels
# 2. On the device (its `run` tool: carry [".whl"]), from the repository root:
#        bash bench/gpu_device_run.sh
# 3. Checked here on the CPU at tiny size (about two minutes; the CUDA test is skipped, the tiny
#    harness runs instead):
#        MIFA_GPU_RUN_SIZE=tiny OUT=/tmp/gpu-run bash bench/gpu_device_run.sh
set -euo pipefail

# What the device image lacks of what the chain imports (KINDS.md lists what it has), pinned to the
# versions this repository is tested with. insightface 2.1 is a pure-Python wheel.
# diffusers 0.42 needs huggingface-hub >= 1.32: versions.txt shows the device's; carry a newer one if it is older.
WHEELS=(diffusers==0.42.1 importlib-metadata==10.2.0 duckdb==2.0.1 orjson==3.13.0 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 insightface==2.1)

WHEEL_DIR="${MIFA_WHEELS:-.whl}"  # .whl/ is in .gitignore: it travels only when a device call carries it
if [[ "${1:-}" == "--prepare-wheels" ]]; then
    # pip matches each manylinux tag exactly: these cover the wheels above.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEEL_DIR" "${WHEELS[@]}"
    du -sh "$WHEEL_DIR"
    exit 0
fi

SIZE="${MIFA_GPU_RUN_SIZE:-full}"
OUT="${OUT:-$PWD/bench/out/gpu}"
PY="${PYTHON:-python3}"
WORK="${MIFA_GPU_WORK:-/tmp/mifa-gpu-run}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MIFA_GPU_MODELS="$WORK/models"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ -d "$WHEEL_DIR" ]] && ! "$PY" -c "import diffusers, pydantic, duckdb, orjson, insightface" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEEL_DIR"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import torch, onnxruntime as o, transformers, huggingface_hub as h; print('torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'huggingface_hub', h.__version__,
'onnxruntime', o.__version__, o.get_available_providers())" | tee "$OUT/versions.txt"

status=0
step() {  # step NAME SECONDS COMMAND...: run it with its log in $OUT/NAME.log; note a failure or a timeout
    local name=$1 limit=$2 rc=0
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
    grep -v -e "CLIP can only handle" -e "Token indices sequence" "$OUT/$name.log" | tail -40 || true
    if [[ $rc -ne 0 ]]; then
        echo "$name: exit $rc$([[ $rc -eq 124 ]] && echo " (ran past ${limit} s)")" | tee -a "$OUT/status.txt"
        status=1
    fi
}
# On a CPU at tiny size everything is slower than on the device, where the 10-minute call is the limit.
if [[ "$SIZE" == "full" ]]; then smoke_s=200 bench_s=350; else smoke_s=600 bench_s=900; fi
if [[ "$SIZE" == "full" ]]; then
    # Builds the models into $MIFA_GPU_MODELS (about a minute), then one shard of 2 x 4 samples.
    step smoke "$smoke_s" "$PY" -m pytest -q -p no:cacheprovider -rs -s -m gpu tests/gpu/test_cuda_smoke.py
else
    step smoke "$smoke_s" "$PY" -m pytest -q -p no:cacheprovider -rs tests/gpu/test_cuda_smoke.py \
        "tests/gpu/test_harness_tiny.py::test_the_smoke_harness_runs_the_shard_worker_at_tiny_size_on_cpu"
fi
# Reuses the smoke test's models; writes the result file after each part (a run cut short keeps those).
step bench "$bench_s" "$PY" -m bench.bench_gpu --size "$SIZE" --work "$WORK" --out "$OUT/bench_gpu.json"
exit $status
