#!/usr/bin/env bash
# Every GPU measurement of a session in one call of the device tool (a lent H200, minutes of device time):
#   - the `samplers` suite (issue 13): every sampler, three seeds, ResNet-56, evaluated on the GPU;
#   - the `recovery` suite (issue 14): search + fine-tuning on 53,000 training images, baseline fine-tuned the same way.
# Both run at once (the GPU is far from full with CIFAR ResNets) and are cut at DEADLINE seconds; whatever
# finished comes back in $OUT/results.tar.gz. The data travel in .gpu/ (ignored; `carry` it), laid out like
# ../shared/data, with train_jpeg.tar gzipped (16 MB); the packages that machine lacks travel as wheels in .whl/.
#
#   run(command="bash tools/gpu_benchmarks.sh", carry=[".gpu", ".whl"], timeout_s=590)
set -uo pipefail
DEADLINE=${DEADLINE:-500}
OUT=${OUT:-runs/gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi
export ADANS_BENCH_DATA=${ADANS_BENCH_DATA:-$PWD/.gpu} PYTHONUNBUFFERED=1
# numpy's BLAS (the adans sampler's fits) otherwise takes every core in every job: on 2026-12-04, 8 concurrent
# jobs slowed about 20x at once (suspected oversubscription, not diagnosed).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}
DEVICE=${DEVICE:-cuda}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ort', onnxruntime.__version__)"

python3 tools/bench_compile.py --deadline "$DEADLINE" --suite recovery --device "$DEVICE" --parallel 2 ${RECOVERY_JOBS:+--jobs $RECOVERY_JOBS} &
recovery=$!
python3 tools/bench_compile.py --deadline "$DEADLINE" --suite samplers --device "$DEVICE" --parallel "${SAMPLER_PARALLEL:-4}" ${SAMPLER_JOBS:+--jobs $SAMPLER_JOBS} &
samplers=$!
wait $samplers; echo "samplers suite exit $?"
wait $recovery; echo "recovery suite exit $?"

for suite in samplers recovery; do python3 tools/bench_compile.py --suite $suite --device "$DEVICE" --write-md; done
cp BENCHMARKS.md "$OUT/BENCHMARKS.gpu.md"
# Reports, logs and histories; not the models or checkpoints (the device tool brings back 64 MB at most).
tar czf "$OUT/results.tar.gz" --exclude='*.onnx' --exclude='*.pt' --exclude='state' runs/bench_compile/samplers-"${DEVICE%%:*}" runs/bench_compile/recovery-"${DEVICE%%:*}"
ls -la "$OUT"
