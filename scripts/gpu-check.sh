#!/usr/bin/env bash
# One prepared check of the GPU path, for a machine with an NVIDIA GPU, its driver and
# PyTorch (no Rust, no GStreamer, no network needed):
#
#   scripts/gpu-check.sh RESULTS_DIR
#
# 1. parity: image embeddings on the device (f16) against the CPU path (f32), for the
#    bundled model and a random-weight ViT-B/32, from RGB and from I420/NV12 frames
#    (conversion, resize and normalization on the device);
# 2. the vision tower of ViT-B/32 and ViT-L/14 shapes (random weights) at batch 1, 8,
#    32, 128 and 256 in images/s, side by side in the same run with PyTorch in fp16 on
#    SDPA (transformers when installed) on the same weights, and where cliptag's time
#    goes, stage by stage (`cliptag bench --profile`);
# 3. the element end to end: N parallel 1920x1080 I420 streams sharing one engine
#    (ViT-B/32), frames/s and how many 30 fps streams that makes. Each stream is one
#    frame videotestsrc renders, repeated by imagefreeze (the same memory, no copy), so
#    that the figure is cliptag's: videotestsrc renders a 1080p frame at about 110
#    frames/s on one core, far below what a GPU infers.
# It prints a short table last and writes everything into RESULTS_DIR (table.txt, one
# JSON file per measurement, the logs).
#
# cliptag comes from the CUDA bundle that `./x build-cuda` makes: CLIPTAG_BUNDLE (its
# directory or its .tar.xz), else target/cuda/cliptag-cuda(.tar.xz). Without a GPU the
# script runs its CPU fallback: the same steps, fewer batch sizes and streams, f16
# parity on the CPU, with a CPU build (the bundle, or target/release from
# `cargo build --release -p cliptag-cli -p gst-cliptag`).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: scripts/gpu-check.sh RESULTS_DIR" >&2; exit 2; }
mkdir -p "$1" || exit 1
OUT=$(cd "$1" && pwd)
FAILED=()

say() { printf '\n==> %s\n' "$*" >&2; }
# `try NAME CMD...`: runs a step with a time limit, its stdout into NAME.json and its
# stderr into NAME.log; a failure is recorded and the script goes on.
try() {
    local name=$1 limit=${STEP_LIMIT:-240}
    shift
    if ! timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; then
        echo "gpu-check: step $name failed (see $OUT/$name.log):" >&2
        tail -n 5 "$OUT/$name.log" >&2
        FAILED+=("$name")
        rm -f "$OUT/$name.json"
        return 1
    fi
}

# ---------------------------------------------------------------- what runs where

PY=""
for candidate in "${PYTHON:-}" python3 "$ROOT/.venv-tools/bin/python"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import torch, numpy' 2>/dev/null; then
        PY=$candidate
        break
    fi
done
[ -n "$PY" ] || { echo "gpu-check: no Python with torch and numpy (set PYTHON)" >&2; exit 1; }

if nvidia-smi -L >/dev/null 2>&1 && "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    MODE=cuda DEVICE=cuda:0 DTYPE=f16 TORCH_DEVICE=cuda TORCH_DTYPE=fp16 TORCH_THREADS=0
    BATCHES=1,8,32,128,256 BENCH_SECONDS=1 ITERS=5
    STREAMS=(1 4 8 16) MAX_BATCH=32 SHORT=30 LONG_TOTAL=4800
    DEVICE_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
else
    MODE=cpu DEVICE=cpu DTYPE=f16 TORCH_DEVICE=cpu TORCH_DTYPE=fp32 TORCH_THREADS=$(nproc)
    BATCHES=1,8 BENCH_SECONDS=2 ITERS=2
    STREAMS=(1 2) MAX_BATCH=8 SHORT=4 LONG_TOTAL=64
    DEVICE_NAME="CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) threads"
fi
# On a GPU, the CUDA bundle; in the CPU fallback, a local build when there is one (the
# bundle otherwise). CLIPTAG_BUNDLE names a bundle to use in either mode.
BUNDLE=${CLIPTAG_BUNDLE:-}
if [ -z "$BUNDLE" ] && { [ "$MODE" = cuda ] || [ ! -x "$ROOT/target/release/cliptag" ]; }; then
    for candidate in "$ROOT/target/cuda/cliptag-cuda" "$ROOT/target/cuda/cliptag-cuda.tar.xz"; do
        [ -e "$candidate" ] && { BUNDLE=$candidate; break; }
    done
fi
if [ -n "$BUNDLE" ] && [ -f "$BUNDLE" ]; then
    UNPACKED=$(mktemp -d)
    trap 'rm -rf "$UNPACKED"' EXIT
    # Python's tarfile where tar has no xz to call.
    tar -C "$UNPACKED" -xf "$BUNDLE" 2>/dev/null \
        || "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE" "$UNPACKED" \
        || exit 1
    BUNDLE=$(ls -d "$UNPACKED"/*/ | head -n 1)
fi
if [ -n "$BUNDLE" ]; then
    CLIPTAG=("$BUNDLE/env.sh" cliptag)
    GST_LAUNCH=("$BUNDLE/env.sh" gst-launch-1.0)
    SOURCE="bundle $BUNDLE"
elif [ -x "$ROOT/target/release/cliptag" ]; then
    CLIPTAG=("$ROOT/target/release/cliptag")
    GST_LAUNCH=(env GST_PLUGIN_PATH="$ROOT/target/release" gst-launch-1.0)
    SOURCE="local build target/release"
else
    echo "gpu-check: no cliptag: run ./x build-cuda (or cargo build --release -p cliptag-cli -p gst-cliptag)" >&2
    exit 1
fi

# The bundled binaries load the CUDA 13 runtime, cuBLAS and cuRAND even on the CPU: from
# CLIPTAG_CUDA_LIBS, else from the NVIDIA wheels and torch/lib of the Python found above
# (env.sh itself only looks at python3's). Checked before anything else runs.
if [ -n "$BUNDLE" ] && [ -z "${CLIPTAG_CUDA_LIBS:-}" ]; then
    CLIPTAG_CUDA_LIBS=$("$PY" -c 'import glob, os, site, torch
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = [d for r in roots for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib")))]
print(":".join(dirs + [os.path.join(os.path.dirname(torch.__file__), "lib")]))' 2>/dev/null)
    export CLIPTAG_CUDA_LIBS
fi
if ! "${CLIPTAG[@]}" --version > "$OUT/cliptag-version.txt" 2>&1; then
    echo "gpu-check: cliptag does not start:" >&2
    cat "$OUT/cliptag-version.txt" >&2
    if [ -n "$BUNDLE" ]; then
        echo "missing libraries (set CLIPTAG_CUDA_LIBS to the directories of the CUDA 13 runtime, cuBLAS and cuRAND):" >&2
        "$BUNDLE/env.sh" sh -c 'ldd "$(command -v cliptag)"' | grep "not found" >&2
    fi
    exit 1
fi

# The tower's precision: f16 on the GPU; f32 in the CPU fallback, where f16 is slow
# (the fallback measures f16 only for parity).
TOWER_DTYPE=$([ "$MODE" = cuda ] && echo f16 || echo f32)

say "gpu-check in $MODE mode on $DEVICE_NAME; cliptag from the $SOURCE; results in $OUT"
"$PY" - "$OUT/environment.json" "$MODE" "$DEVICE_NAME" "$TOWER_DTYPE" "$SOURCE" <<'PY'
import json, sys, datetime, platform, torch
out, mode, name, dtype, source = sys.argv[1:6]
try:
    import transformers
    tf = transformers.__version__
except ImportError:
    tf = None
json.dump({"date": datetime.date.today().isoformat(), "mode": mode, "device_name": name, "dtype": dtype,
           "cliptag": source, "torch": torch.__version__, "transformers": tf,
           "cuda": torch.version.cuda, "python": platform.python_version()}, open(out, "w"), indent=2)
PY

MODELS=$OUT/models
say "random-weight ViT-B/32 and ViT-L/14 (fp16 safetensors, CLIP's tokenizer)"
for arch in vit-b-32 vit-l-14; do
    [ -f "$MODELS/$arch/model.safetensors" ] \
        || "$PY" "$ROOT/tools/gpu_check.py" make-model --arch "$arch" --out "$MODELS/$arch" \
        || FAILED+=("make-$arch")
done

# ---------------------------------------------------------------- 1. parity

say "parity: $DEVICE in $DTYPE against the CPU in f32"
DATA=$ROOT/crates/cliptag-model/tests/data
IMAGES=()
for f in "$DATA"/photos/*.png "$DATA"/photos/*.jpg; do IMAGES+=(--image "$f"); done
for f in $(ls "$DATA"/heldout/*.png | awk 'NR % 32 == 1'); do IMAGES+=(--image "$f"); done
for model in bundled vit-b-32; do
    model_arg=()
    [ "$model" = bundled ] || model_arg=(--model "$MODELS/$model")
    for format in RGB I420 NV12; do
        tag=$model-$format
        try "embed-$tag-cpu-f32" "${CLIPTAG[@]}" embed "${model_arg[@]}" --device cpu --dtype f32 \
            --format "$format" "${IMAGES[@]}" || continue
        variants=("$DTYPE")
        [ "$MODE" = cuda ] && variants+=(f32)
        for dtype in "${variants[@]}"; do
            try "embed-$tag-$MODE-$dtype" "${CLIPTAG[@]}" embed "${model_arg[@]}" --device "$DEVICE" \
                --dtype "$dtype" --format "$format" "${IMAGES[@]}" || continue
            try "parity-$tag-$MODE-$dtype" "$PY" "$ROOT/tools/gpu_check.py" parity \
                "$OUT/embed-$tag-cpu-f32.json" "$OUT/embed-$tag-$MODE-$dtype.json"
        done
    done
done
rm -f "$OUT"/embed-*.json

# ---------------------------------------------------------------- 2. the vision tower

for arch in vit-b-32 vit-l-14; do
    batches=$BATCHES
    [ "$MODE" = cpu ] && [ "$arch" = vit-l-14 ] && batches=1
    say "vision tower $arch, batch $batches: cliptag, then PyTorch"
    try "tower-$arch-cliptag" "${CLIPTAG[@]}" bench --model "$MODELS/$arch" --device "$DEVICE" \
        --dtype "$TOWER_DTYPE" --batch "$batches" --seconds "$BENCH_SECONDS" --iters "$ITERS" --json \
        --profile
    try "tower-$arch-torch" "$PY" "$ROOT/tools/gpu_check.py" bench --model "$MODELS/$arch" \
        --device "$TORCH_DEVICE" --dtype "$TORCH_DTYPE" --threads "$TORCH_THREADS" --batch "$batches" \
        --seconds "$BENCH_SECONDS" --iters "$ITERS"
done

# ---------------------------------------------------------------- 3. the element

# N branches of videotestsrc ! imagefreeze ! cliptag ! fakesink in one pipeline, every
# element on the same engine-id: one model, one worker, batches across the streams.
pipeline() {  # $1 = streams, $2 = frames per stream
    local i branches=()
    for i in $(seq 1 "$1"); do
        branches+=(videotestsrc num-buffers=1 pattern=ball
            ! video/x-raw,format=I420,width=1920,height=1080,framerate=30/1
            ! imagefreeze num-buffers="$2"
            ! cliptag model="$MODELS/vit-b-32" device="$DEVICE" dtype="$TOWER_DTYPE" engine-id=gpu-check
            max-batch="$MAX_BATCH" max-latency=20 stream-id="s$i"
            labels="a ball,colour bars,tv static,a checkerboard,a pinwheel" ! fakesink)
    done
    timeout "${STEP_LIMIT:-240}" "${GST_LAUNCH[@]}" -q "${branches[@]}"
}
timed() {  # prints the seconds a pipeline took
    local t0 t1
    t0=$(date +%s.%N)
    pipeline "$@" >&2 || return 1
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
say "element: N x videotestsrc 1920x1080 I420 ! imagefreeze ! cliptag ! fakesink, one engine, max-batch $MAX_BATCH"
RUNS=()
for n in "${STREAMS[@]}"; do
    # The long run carries the same number of frames whatever the streams, so that its
    # difference from the short one stays well above start-up's variation.
    LONG=$((SHORT + LONG_TOTAL / n))
    if a=$(timed "$n" "$SHORT" 2>> "$OUT/element.log") && b=$(timed "$n" "$LONG" 2>> "$OUT/element.log"); then
        RUNS+=("$n:$SHORT:$LONG:$a:$b")
        echo "gpu-check: $n streams: $SHORT frames each in $a s, $LONG in $b s" >&2
    else
        echo "gpu-check: element with $n streams failed (see $OUT/element.log)" >&2
        tail -n 5 "$OUT/element.log" >&2
        FAILED+=("element-$n")
    fi
done
if [ ${#RUNS[@]} -gt 0 ]; then
    "$PY" "$ROOT/tools/gpu_check.py" element --runs "${RUNS[@]}" --max-batch "$MAX_BATCH" \
        --bare "$OUT/tower-vit-b-32-cliptag.json" --size 1920x1080 --format I420 \
        --model-name "ViT-B/32 $TOWER_DTYPE" > "$OUT/element.json" || FAILED+=("element-summary")
fi
rm -rf "$MODELS"
say "summary"
"$PY" "$ROOT/tools/gpu_check.py" report "$OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu-check: failed steps: ${FAILED[*]}" | tee -a "$OUT/table.txt"
    exit 1
fi
