#!/usr/bin/env bash
# The one prepared GPU check of issue 13: run it once on a lent GPU (about 8 minutes), then copy its tables into
# docs/benchmarks.md with the machine they name.
#
#   bash scripts/gpu_check.sh [OUTPUT_DIR]          # on the GPU machine (OUTPUT_DIR defaults to $OUT or docs/gpu_check)
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh /tmp/rehearsal   # the same steps, tiny, on a CPU (rehearsal)
#
# 1. scripts/bench_losses.py on the device (CUDA events), the default shapes.
# 2. scripts/bench_train.py for resnet18_sgd_none, vitpeak_adamw_mix_none and mlp_sgd_none: the recipe as is (fp32, eager,
#    per-image augmentation in DataLoader workers) against --fast, images/s, and the whole table's training hours
#    estimated from the measured rates.
# 3. One real epoch of resnet18_sgd_mix_weak with --fast and evaluation (results.json kept).
#
# Data: GPU_CHECK_DATA, an image folder or the CIFAR-10 tarball (default ../shared/data/cifar10-jpg.tar.gz). Where
# none is there (the GPU machine gets only the repository), a synthetic CIFAR-shaped parquet folder of 50,000
# training images is written instead: right for speed, meaningless for accuracy, and the output says so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-docs/gpu_check}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
QUICK=${GPU_CHECK_QUICK:-0}
WORK=${GPU_CHECK_WORK:-/tmp/sigreg_gpu_check}
mkdir -p "$WORK"
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT_DIR/gpu_check.log"; }

python - <<'PY' | tee "$OUT_DIR/machine.txt"
import os, platform, torch, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"{gpu}; {os.cpu_count()} CPUs; torch {torch.__version__}, transformers {transformers.__version__}, "
      f"python {platform.python_version()}")
PY

DATA=${GPU_CHECK_DATA:-../shared/data/cifar10-jpg.tar.gz}
if [ -f "$DATA" ]; then
  mkdir -p "$WORK/cifar10" && tar xzf "$DATA" -C "$WORK/cifar10"
  DATASET="$WORK/cifar10"; DATA_NOTE="real CIFAR-10 ($DATA)"
elif [ -d "$DATA" ]; then
  DATASET="$DATA"; DATA_NOTE="image folder $DATA"
else
  NUM_TRAIN=$([ "$QUICK" = 1 ] && echo 2000 || echo 50000)
  python -c "from sigreg_hf.experiments.data.synthetic import write_synthetic_cifar100 as w; \
w('$WORK/synthetic', num_train=$NUM_TRAIN, num_test=2000, num_classes=10)"
  DATASET="$WORK/synthetic"; DATA_NOTE="SYNTHETIC CIFAR-shaped images ($NUM_TRAIN train): speed only, accuracy meaningless"
fi
log "data: $DATA_NOTE"

if [ "$QUICK" = 1 ]; then
  LOSS_ARGS="--quick --no-memory"; STEPS=8; WARMUP=2; WORKERS=2; EPOCH_ARGS="--max_steps 6 --max_eval_samples 256"
  FAST_ARGS="--torch_compile_backend aot_eager"   # inductor's CPU code generation alone takes minutes
else
  LOSS_ARGS="--no-memory"; STEPS=200; WARMUP=50; WORKERS=12; EPOCH_ARGS="--num_train_epochs 1"; FAST_ARGS=""
fi
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

log "1/3 bench_losses ($DEVICE)"
timeout 150 python scripts/bench_losses.py --device "$DEVICE" $LOSS_ARGS --output "$OUT_DIR/bench_losses.md" \
  > "$WORK/bench_losses.out" 2>&1 || log "bench_losses failed or timed out: $(tail -n 3 "$WORK/bench_losses.out")"

log "2/3 bench_train resnet18 / vitpeak / mlp: recipe as is vs --fast"
timeout 330 python scripts/bench_train.py --dataset_name "$DATASET" --mean_std cifar10 \
  --recipes resnet18_sgd_none vitpeak_adamw_mix_none mlp_sgd_none --variants project fast --repeats 1 \
  --steps "$STEPS" --warmup "$WARMUP" --num_workers "$WORKERS" --threads 4 --estimate_table \
  --fast_args "$FAST_ARGS" --output "$OUT_DIR/bench_train.md" 2>&1 | tee "$WORK/bench_train.out" \
  || log "bench_train failed or timed out"

log "3/3 one epoch of resnet18_sgd_mix_weak --fast with evaluation"
rm -rf "$WORK/epoch"
timeout 240 python scripts/train.py --recipe resnet18_sgd_mix_weak --dataset_name "$DATASET" --mean_std cifar10 \
  --fast --output_dir "$WORK/epoch" --dataloader_num_workers "$WORKERS" --save_strategy no --write_plots false \
  --logging_steps 50 $EPOCH_ARGS $FAST_ARGS 2>&1 | tail -n 5 | tee -a "$OUT_DIR/gpu_check.log" \
  || log "the epoch failed or timed out"
[ -f "$WORK/epoch/results.json" ] && cp "$WORK/epoch/results.json" "$OUT_DIR/epoch_results.json"
echo "data: $DATA_NOTE" >> "$OUT_DIR/machine.txt"
log "done: $(ls "$OUT_DIR" | tr '\n' ' ')"
