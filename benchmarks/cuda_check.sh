#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one go (under 9 minutes on one H200):
#   1. tests/test_cuda.py: parity with HF on the GPU (fp32 and bf16 autocast), a bf16 training step
#      with fused AdamW and flash attention, generation and scoring equal to HF, exact resume,
#      torch.compile, the out-of-memory message;
#   2. `lmforge bench` on the GPU (bf16 autocast for both libraries), the training cases also compiled;
#   3. the quick start and the BERT and T5 presets, trained on the GPU;
#   4. the whole test suite with the GPU visible (device "auto" picks it), on 12 workers where
#      pytest-xdist is installed.
# Usage, from the repository root with lmforge importable (installed, or PYTHONPATH=src):
#   OUT=gpu_check benchmarks/cuda_check.sh      # logs and the bench JSON land in $OUT
# Every step runs even when one fails; the exit status is the number of failed steps.
set -uo pipefail
OUT=${OUT:-gpu_check}
RUNS=${RUNS:-$(mktemp -d)}  # the presets' run directories
mkdir -p "$OUT"
failed=0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY - <<'EOF'
import time, torch, transformers
print("torch", torch.__version__, "CUDA", torch.version.cuda, "transformers", transformers.__version__,
      "GPU", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ a
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(10):
    a @ a
torch.cuda.synchronize()
print(f"measured bf16 matmul 8192^3: {10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12:.0f} TFLOP/s")
EOF

step "tests/test_cuda.py"
timeout 200 $PY -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt" \
    || failed=$((failed + 1))

step "lmforge bench on the GPU"
timeout 240 $PY -m lmforge bench --cases train-tiny,train-small,train-bert,train-gpt2,generate,score \
    --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench.txt" || failed=$((failed + 1))
timeout 150 $PY -m lmforge bench --cases train-gpt2 --compile --rounds 5 \
    --json "$OUT/bench_cuda_compiled.json" 2>&1 | tee -a "$OUT/bench.txt" || failed=$((failed + 1))

step "the quick start and the other presets on the GPU"
for preset in shakespeare-gpt shakespeare-bert shakespeare-t5; do
    t0=$(date +%s)
    timeout 150 $PY -m lmforge train --preset $preset --train.progress false --out "$RUNS/$preset" --overwrite 2>&1 \
        | grep -v "^step " | tail -14 | tee -a "$OUT/presets.txt" || failed=$((failed + 1))
    echo "$preset: $(( $(date +%s) - t0 )) s wall" | tee -a "$OUT/presets.txt"
done
$PY -m lmforge generate "$RUNS/shakespeare-gpt/best" --prompt "ROMEO:" --max-new-tokens 60 --seed 1 2>&1 | tail -5 \
    || failed=$((failed + 1))
$PY -m lmforge score "$RUNS/shakespeare-gpt/best" --text "To be, or not to be, that is the question" 2>&1 | tail -3 \
    || failed=$((failed + 1))

step "the whole suite with the GPU visible"
workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 12")
timeout 200 $PY -m pytest -q -p no:cacheprovider $workers -rfE 2>&1 | tee "$OUT/suite.txt" | tail -40 \
    || failed=$((failed + 1))
step "done: $failed step(s) failed"
exit $failed
