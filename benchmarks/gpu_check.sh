#!/usr/bin/env bash
# One prepared pass on a machine with an NVIDIA GPU, for when one is lent for minutes only:
#   1. chipbench installed into that machine's own Python and torch (no registry needed: the COCO
#      evaluators come as wheels from WHEELS, default .whl/; see benchmarks/README.md);
#   2. the cuda tox env's tests (`pytest -m cuda`: tests/test_cuda.py and the contract test);
#   3. a short benchmark: the case at COCO size (800x1333 synthetic images, batch 16) in fp32, amp
#      and bf16, BENCH_ITERS iterations each; p_core, MFU and memory per precision;
#   4. the rest of the suite (what the cpu env runs) with the GPU visible, for what SUITE_S allows.
# Everything goes to $OUT (default /tmp/gpu-check): log.txt, and bench.json with the figures.
# Usage: OUT=/tmp/x bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
WHEELS=${WHEELS:-.whl}
BENCH_ITERS=${BENCH_ITERS:-30}  # 0: no benchmark
SUITE_S=${SUITE_S:-150}
CUDA_TESTS=${CUDA_TESTS:-1}  # 0: leave out step 2
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CHIPBENCH_NO_TESTS_OK=1
export CHIPBENCH_CACHE=${CHIPBENCH_CACHE:-/tmp/chipbench-cache}
exec > >(tee -a "$OUT/log.txt") 2>&1
started=$SECONDS
stamp() { echo "=== [$((SECONDS - started)) s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc
$PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.version.cuda, torch.cuda.is_available())"

stamp "install"
# into the interpreter's own site-packages (a test checks commands from a folder with PYTHONPATH
# cleared); into a folder on PYTHONPATH where those are read-only
install() {
  if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation "$@"; then
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/chipbench-site "$@"
    export PYTHONPATH="/tmp/chipbench-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  install "$WHEELS"/*.whl
fi
install . examples/fakechip examples/spirals
time $PY -m chipbench vendors
$PY -m chipbench info --vendor cuda

stamp "cuda tests"
[ "$CUDA_TESTS" = 0 ] || timeout -k 10 420 $PY -m pytest -m cuda -rs -v --durations=15 -p no:cacheprovider tests
echo "cuda tests rc=$?"

stamp "benchmark: COCO-size synthetic images, batch 16"
for precision in fp32 amp bf16; do
  [ "$BENCH_ITERS" = 0 ] && break
  timeout -k 10 180 $PY -m chipbench run retinanet --vendor cuda --precision "$precision" \
    --output "/tmp/bench-$precision" \
    --set data.synthetic.train_images=320 --set data.synthetic.val_images=16 \
    --set data.synthetic.image_size=800 --set model.min_size=800 --set model.max_size=1333 \
    --set train.batch_size=16 --set eval.batch_size=16 --set train.max_iters="$BENCH_ITERS" \
    --set run.checkpoint=false --set data.num_workers=6 2>&1 | tail -n 4
  echo "bench $precision rc=${PIPESTATUS[0]}"
done
$PY - "$OUT/bench.json" <<'EOF'
import json, sys
rows = {}
for precision in ("fp32", "amp", "bf16"):
    try:
        result = json.load(open("/tmp/bench-{}/result.json".format(precision)))
    except OSError:
        continue
    m = result["metrics"]
    rows[precision] = {k: m.get(k) for k in ("p_whole", "p_train", "p_core", "mfu", "peak_tflops",
                                            "achieved_tflops", "mem", "allocator_peak_gib",
                                            "iterations", "e2e_time")}
    rows[precision]["status"] = result["status"]
    rows[precision]["device"] = result["environment"].get("device_model")
json.dump(rows, open(sys.argv[1], "w"), indent=1)
for precision, row in rows.items():
    print(precision, row)
EOF

stamp "the cpu env's suite with the GPU visible (at most $SUITE_S s)"
timeout -k 10 "$SUITE_S" $PY -m pytest -m "not cuda and not metax and not slow" -v -rf \
  -p no:cacheprovider tests/test_bad_inputs.py tests
echo "suite rc=$?"
stamp "done"
