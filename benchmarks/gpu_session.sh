#!/usr/bin/env bash
# The GPU measurements, as three runs of under 10 minutes each on a machine
# with one NVIDIA GPU, no network, and jax (CUDA), flax, optax, orbax, torch
# and torchvision already installed. The trainer's two missing pure-Python
# dependencies travel as wheels in .whl/ (ml-collections, tensorboardX).
#
#   bash benchmarks/gpu_session.sh decide    # sanity + the bf16 model rows
#   bash benchmarks/gpu_session.sh kernels   # grouped 3x3s, checks, float32
#   bash benchmarks/gpu_session.sh trainer   # python -m train, batch 256
#
# Results (JSON, logs) go to $OUT (default: benchmarks/results/gpu).
# Each step has its own time limit, so one slow step cannot eat the rest.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX would take 75% of the GPU up front, leaving torch too little.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
BENCH="python3 benchmarks/bench_gpu.py"
step() {  # step SECONDS NAME COMMAND...: run with a limit, log to $OUT/NAME.log
  local limit=$1 name=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0))s"
  tail -n 25 "$OUT/$name.log"
}

case "${1:-}" in
  decide)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import jax, flax, optax, torch, torchvision; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
    step 60 sanity $BENCH --parts sanity --json "$OUT/sanity.json"
    step 330 model_train_bf16 $BENCH --parts model --modes train \
      --dtypes bfloat16 --json "$OUT/model_train_bf16.json"
    step 170 model_infer_bf16 $BENCH --parts model --modes infer \
      --dtypes bfloat16 --json "$OUT/model_infer_bf16.json"
    ;;
  kernels)
    step 260 conv $BENCH --parts conv --chunks 1,4,32 --json "$OUT/conv.json"
    step 100 check $BENCH --parts check --json "$OUT/check.json"
    step 200 model_f32 $BENCH --parts model --dtypes float32 \
      --model-impls "${IMPLS:-xla}" --no-torch-compile \
      --json "$OUT/model_f32.json"
    ;;
  trainer)
    step 120 train_default python3 -m train --workdir /tmp/w_default
    step 240 train_r50_224 python3 -m train \
      --config configs/imagenet_resnext50_32x4d.py --workdir /tmp/w_r50 \
      --config.dataset=digits --config.image_size=224 \
      --config.batch_size=256 --config.eval_batch_size=120 \
      --config.num_train_steps=300 --config.compute_dtype=bfloat16 \
      --config.log_every_steps=50 --config.checkpoint_every_steps=300
    step 200 model_b256 $BENCH --parts model --modes train \
      --batch-sizes 256 --dtypes bfloat16 \
      --model-impls "${IMPLS:-xla}" --no-torch-compile \
      --json "$OUT/model_b256.json"
    ;;
  check)  # One process per lowering: an XLA crash stops only its own.
    for impl in ${IMPLS:-auto dense}; do
      step 100 "check_$impl" $BENCH --parts check --check-impls "$impl" \
        --json "$OUT/check_$impl.json"
      step 100 "check_${impl}_no_triton_gemm" env \
        XLA_FLAGS=--xla_gpu_enable_triton_gemm=false \
        $BENCH --parts check --check-impls "$impl" \
        --json "$OUT/check_${impl}_no_triton_gemm.json"
    done
    ;;
  *)
    echo "usage: $0 decide|kernels|trainer|check" >&2; exit 2 ;;
esac
