#!/usr/bin/env bash
# The GPU check of issue 20, in one script that ends within GPU_CHECK_BUDGET seconds (450:
# under 8 minutes): nvidia-smi, a CUDA session probe, the CUDA-provider tests, saliency on
# CUDA against the CPU, and explain-dataset's throughput with the CUDA provider (local
# engine against Explainer.explain in memory; then local, Ray with 1 actor of 1 GPU and 2
# actors of half a GPU each, where Ray is installed).
#
#   bash benchmarks/gpu_check.sh                  on a GPU machine, from the repository root
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh  anywhere: the CUDA-only steps are skipped
#   bash benchmarks/gpu_check.sh prepare          here, before lending a GPU machine
#
# The GPU machine reaches no package index. Its python3 has numpy, onnx, onnx-ir, Pillow,
# pytest, pyarrow, psutil, torch and transformers, but onnxruntime without CUDA and no Ray.
# `prepare` (run on a machine with PyPI) puts the onnxruntime-gpu wheel (cp312, like the
# device's python3), the zoo's ResNet-18 and, with GPU_CHECK_RAY=1, Ray and its missing
# needs into build/gpu_check/ (ignored by git) as one tar cut into parts of
# GPU_CHECK_PART_MB MiB (63 less the working tree): a device call carries at most 64 MiB,
# so each part travels in a call of its own (carry: ["build/gpu_check/payload.tar.NN-of-MM"]),
# the parts stay on the warm machine, and the last call runs this script, which joins them.
# The Python used: $GPU_CHECK_PYTHON, else .venv/bin/python where its onnxruntime has the
# CUDA provider, else python3; the payload's wheels go into a scratch folder ahead of its
# own packages where its onnxruntime lacks CUDA, and the checkout is put on its path where
# onnxplain is not installed.
#
# Results: the whole log, nvidia-smi's report and one line per step (name, status,
# seconds) go to $OUT (or build/gpu_check/results) as gpu_check.log, nvidia-smi.txt and
# steps.txt. The exit code is 1 when a step failed, 2 when there is no GPU to check.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
STASH=build/gpu_check

prepare() {
    local tree_mb part_mb stage
    # What travels with every call (tracked and untracked-not-ignored files), rounded up.
    tree_mb=$(git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null | wc -c)
    tree_mb=$(((tree_mb >> 20) + 1))
    part_mb=${GPU_CHECK_PART_MB:-$((63 - tree_mb))}
    stage=$(mktemp -d)
    local platforms=(--only-binary=:all: --python-version 3.12 --implementation cp
                     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    local wheels=("onnxruntime-gpu==${GPU_CHECK_ORT:-1.31.1}")
    if [ "${GPU_CHECK_RAY:-0}" = 1 ]; then
        # Ray's needs that the device's image lacks (it has the others, pyarrow and pandas).
        wheels+=("ray==${GPU_CHECK_RAY_VERSION:-2.60.0}" jsonschema jsonschema-specifications
                 referencing rpds-py)
    fi
    mkdir -p "$stage/wheels"
    python3 -m pip download -q --no-deps "${platforms[@]}" -d "$stage/wheels" "${wheels[@]}" \
        || { echo "prepare: pip download failed" >&2; return 1; }
    .venv/bin/python -c "import model_zoo, shutil, sys; shutil.copy(model_zoo.model_path(
'resnet18'), sys.argv[1])" "$stage/resnet18.onnx" || return 1
    rm -rf "$STASH" && mkdir -p "$STASH"
    # The wheels and the model barely compress: a plain tar, cut to size.
    tar -C "$stage" -cf - wheels resnet18.onnx \
        | split -b "${part_mb}M" -d -a 2 - "$STASH/payload.tar."
    rm -rf "$stage"
    local parts=("$STASH"/payload.tar.*) part
    for part in "${parts[@]}"; do  # each part says how many there are
        mv "$part" "$part-of-$(printf %02d ${#parts[@]})"
    done
    ls -l "$STASH"
    echo "parts of ${part_mb} MiB beside a working tree of ${tree_mb} MiB (64 MiB a call):"
    echo "carry one part per device call (carry: [\"${parts[0]}-of-$(printf %02d ${#parts[@]})\"],"
    echo "command 'ls $STASH'), and with the last part run: bash benchmarks/gpu_check.sh"
}

if [ "${1:-}" = prepare ]; then
    prepare
    exit $?
fi

DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-450}
RESULTS=${OUT:-$ROOT/$STASH/results}
mkdir -p "$RESULTS"
: > "$RESULTS/steps.txt"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
TEE=$!
FAILED=0

finish() {
    exec >&- 2>&-
    wait "$TEE"  # the log is whole, and printed, before the script ends
    exit "$1"
}

# step NAME SECONDS COMMAND...: COMMAND under `timeout`, never past the budget's end.
step() {
    local name=$1 wanted=$2 left status start
    shift 2
    left=$((BUDGET - SECONDS - 5))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, the budget is spent"
        echo "$name skipped-budget 0" >> "$RESULTS/steps.txt"
        return 0
    fi
    [ "$wanted" -gt "$left" ] && wanted=$left
    echo "== $name (at most ${wanted}s)"
    start=$SECONDS
    timeout --kill-after=5 "$wanted" "$@"
    status=$?
    if [ "$status" -eq 0 ]; then
        echo "$name ok $((SECONDS - start))" >> "$RESULTS/steps.txt"
    else
        [ "$status" -eq 124 ] && echo "== $name: timed out after ${wanted}s"
        echo "$name failed($status) $((SECONDS - start))" >> "$RESULTS/steps.txt"
        FAILED=1
    fi
    return 0
}

echo "gpu_check: $(date -u +%FT%TZ), $(uname -m), GPU_CHECK_DRY=$DRY, budget ${BUDGET}s"
if command -v nvidia-smi >/dev/null && nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1; then
    cat "$RESULTS/nvidia-smi.txt"
elif [ "$DRY" = 1 ]; then
    echo "no GPU (nvidia-smi absent or failing): dry run, the CUDA-only steps are skipped"
else
    echo "no GPU here: nvidia-smi is absent or fails (GPU_CHECK_DRY=1 runs the rest)" >&2
    finish 2
fi

# The Python: one whose onnxruntime has the CUDA provider, and the repository importable.
has_cuda_build() {
    "$1" -c "import onnxruntime as o, sys
sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null
}
PY=${GPU_CHECK_PYTHON:-}
if [ -z "$PY" ] && [ -x .venv/bin/python ] && has_cuda_build .venv/bin/python; then
    PY=.venv/bin/python
fi
PY=${PY:-python3}
SITE=/tmp/gpu_check_site
PARTS=("$STASH"/payload.tar.*-of-*)
if [ -e "${PARTS[0]}" ]; then
    if [ "${#PARTS[@]}" -ne "$((10#${PARTS[0]##*-of-}))" ]; then
        echo "${#PARTS[@]} of the payload's ${PARTS[0]##*-of-} parts are here: carry" \
             "every part of build/gpu_check/, one per call" >&2
        finish 1
    fi
    rm -rf /tmp/gpu_check_payload && mkdir -p /tmp/gpu_check_payload
    cat "${PARTS[@]}" | tar -C /tmp/gpu_check_payload -xf - \
        || { echo "the payload parts do not join: prepare them again" >&2; finish 1; }
fi
if ! has_cuda_build "$PY" && ls /tmp/gpu_check_payload/wheels/*.whl >/dev/null 2>&1; then
    # Ahead of the interpreter's own packages (its onnxruntime without CUDA) on PYTHONPATH.
    step install-wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" /tmp/gpu_check_payload/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import onnxplain_cli" 2>/dev/null; then
    # onnxplain from the checkout, not installed: the package, and cli/ under its own name.
    mkdir -p /tmp/gpu_check_src && ln -sfn "$ROOT/cli" /tmp/gpu_check_src/onnxplain_cli
    export PYTHONPATH="$ROOT:/tmp/gpu_check_src${PYTHONPATH:+:$PYTHONPATH}"
fi
# onnxruntime-gpu loads the CUDA and cuDNN libraries of the nvidia-* wheels beside torch.
NVIDIA_LIBS=$("$PY" -c "import site; print('\n'.join(site.getsitepackages()))" 2>/dev/null \
    | xargs -I{} find {}/nvidia -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u \
    | paste -sd:)
[ -n "$NVIDIA_LIBS" ] && export LD_LIBRARY_PATH="$NVIDIA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
MODEL=resnet18
[ -f /tmp/gpu_check_payload/resnet18.onnx ] && MODEL=/tmp/gpu_check_payload/resnet18.onnx
echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))," \
     "model: $MODEL"
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_device(),
      o.get_available_providers())"

step cuda-probe 60 "$PY" -c "
import sys
from onnxplain.runtime.session import starts
ok = starts('CUDAExecutionProvider')
print('a CUDA session starts:', ok)
sys.exit(0 if ok or '$DRY' == '1' else 'CUDAExecutionProvider does not start here')"

# The tests that branch on CUDA (every file that names the provider), and the CLI test that
# checks the provider a session really got; Ray's tests where Ray is installed.
mapfile -t CUDA_TESTS < <(grep -rlE "CUDAExecutionProvider|gpus_per_worker" tests \
    --include='test_*.py' | grep -v test_ray_engine | sort)
step cuda-tests 120 "$PY" -m pytest -q -p no:cacheprovider "${CUDA_TESTS[@]}" \
    tests/test_cli.py::test_explain_writes_attribution_heatmapless_summary
HAS_RAY=0
"$PY" -c "import ray, ray.data" 2>/dev/null && HAS_RAY=1
if [ "$HAS_RAY" = 1 ] && { [ "$DRY" != 1 ] || [ "${GPU_CHECK_RAY_TESTS:-0}" = 1 ]; }; then
    step ray-tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/dataset/test_ray_engine.py
else
    echo "== ray-tests: skipped (Ray missing, or a dry run without GPU_CHECK_RAY_TESTS=1)"
    echo "ray-tests skipped 0" >> "$RESULTS/steps.txt"
fi

if [ "$DRY" != 1 ]; then
    PROVIDER=cuda
    IMAGES=${GPU_CHECK_IMAGES:-2000}
    ENGINES=(local)
    [ "$HAS_RAY" = 1 ] && ENGINES+=(ray:1:1 ray:2:0.5)
else  # the same steps on the CPU, to try the script
    PROVIDER=cpu
    IMAGES=${GPU_CHECK_IMAGES:-32}
    ENGINES=(local)
    [ "$HAS_RAY" = 1 ] && ENGINES+=(ray:1)
fi
# Saliency on the provider against the CPU on the same rows: float32 rounding flips a ReLU
# or max-pool tie now and then at 224x224, so the maps are compared by their norms.
step "$PROVIDER-equals-cpu" 90 "$PY" -c "
import sys
import numpy as np
sys.path.insert(0, '.')
import onnxplain
model = '$MODEL'
if not model.endswith('.onnx'):
    import model_zoo
    model = str(model_zoo.model_path(model))
x = np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)
cpu = onnxplain.Explainer(model, providers='cpu', progress=False).explain(x)
other = onnxplain.Explainer(model, providers='$PROVIDER', progress=False).explain(x)
gap = np.linalg.norm(other.first - cpu.first) / np.linalg.norm(cpu.first)
same = bool(np.all(other.target == cpu.target))
print('providers used:', other.providers, '; same targets:', same,
      '; relative gap of the maps: %.2e' % gap)
ran = other.providers[0] == {'cuda': 'CUDAExecutionProvider'}.get('$PROVIDER', other.providers[0])
sys.exit(0 if ran and same and gap < 1e-2 else 'the maps or the provider differ')"
export PYTHONUNBUFFERED=1
IMAGES_DIR=/tmp/gpu_check_images
step throughput "$((BUDGET / 3))" "$PY" benchmarks/dataset_throughput.py --model "$MODEL" \
    --provider "$PROVIDER" --images "$IMAGES" --images-dir "$IMAGES_DIR" --batches 32 64
step engines "$((BUDGET / 3))" "$PY" benchmarks/dataset_throughput.py --model "$MODEL" \
    --provider "$PROVIDER" --images "$IMAGES" --images-dir "$IMAGES_DIR" \
    --engines "${ENGINES[@]}"

echo "== steps (name, status, seconds), ${SECONDS}s in all"
cat "$RESULTS/steps.txt"
finish "$FAILED"
