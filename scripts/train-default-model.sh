#!/usr/bin/env bash
# Reproduce the shipped default model (assets/ardiff-default.safetensors) and its evaluation
# (assets/MODEL_CARD.md) from the source clips. About two hours on two CPU cores; minutes on a GPU.
#
#   scripts/train-default-model.sh CLIPS_DIR [WORK_DIR]
#
# CLIPS_DIR holds big_buck_bunny_full.mp4, bigbuckbunny.mp4, earth.mp4, vtest.avi (training) and
# carphone_pristine.mp4, bikes.mp4 (held out). WORK_DIR (default: .) gets data/, runs/ and out/.
set -euo pipefail
CLIPS=$(cd "${1:?usage: $0 CLIPS_DIR [WORK_DIR]}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "${2:-.}"
BIN=${ARDIFF_BIN:-$ROOT/.venv/bin}
K=${ABLATION_STEP:-800}     # the scheduler ablation compares the runs at this step

# 1. Data: decode once at 64x64. The VAE's frame mix takes every 4th frame of the film, so the camera
#    footage is not drowned by animation; the DiT trains on every frame (motion at the source rate).
$BIN/ardiff-train prepare "$CLIPS"/big_buck_bunny_full.mp4 "$CLIPS"/bigbuckbunny.mp4 "$CLIPS"/earth.mp4 \
    "$CLIPS"/vtest.avi -o data/train-64
$BIN/ardiff-train prepare "$CLIPS"/big_buck_bunny_full.mp4 "$CLIPS"/bigbuckbunny.mp4 -o data/vae-64 --frame-stride 4
$BIN/ardiff-train prepare "$CLIPS"/earth.mp4 "$CLIPS"/vtest.avi -o data/vae-64
$BIN/ardiff-train prepare "$CLIPS"/carphone_pristine.mp4 "$CLIPS"/bikes.mp4 -o data/eval-real-64 \
    --split-shots --min-frames 32
$BIN/ardiff-train prepare synthetic:bouncing -o data/eval-bouncing --count 32 --frames 32 --seed 1

# 2. Training: AR-VAE (per frame, then temporal), then the DiT with FoPP; ablation runs to step K.
$BIN/ardiff-train vae-image    --config default-quick --run-dir runs/vae-image
$BIN/ardiff-train vae-temporal --config default-quick --set vae=runs/vae-image --run-dir runs/vae-temporal
# DiT phase 1: FoPP (clean prefix on 25% of clips); the shipped run was stopped at step 1,993.
$BIN/ardiff-train diffusion    --config default-quick --set vae=runs/vae-temporal --run-dir runs/dit --set max_steps=1993
# DiT phase 2: continuation fine-tune, clean prefix on 75% of clips (see trainer/configs/default-quick.toml).
$BIN/ardiff-train diffusion    --config default-quick --run-dir runs/dit --resume --set max_steps=3700 \
    --set clean_prefix_p=0.75
for sched in naive-nondecreasing independent; do
    $BIN/ardiff-train diffusion --config default-quick --set vae=runs/vae-temporal --set scheduler=$sched \
        --set max_steps=$K --run-dir runs/dit-$sched
done

# 3. Package (bf16 weights: half the size, the same samples to within rounding).
$BIN/ardiff-train package --vae runs/vae-temporal --diffusion runs/dit -o assets/ardiff-default.safetensors --dtype bf16
step=$(printf "step-%08d" "$K")
$BIN/ardiff-train package --diffusion runs/dit/checkpoints/$step -o out/ablation/fopp.safetensors
for sched in naive-nondecreasing independent; do
    $BIN/ardiff-train package --diffusion runs/dit-$sched -o out/ablation/$sched.safetensors
done

# 4. Evaluation (the numbers in assets/MODEL_CARD.md).
$BIN/ardiff eval vae --clips data/eval-real-64 --frames 32 --clips-per-video 4 -o out/eval/vae
$BIN/ardiff eval continue --clips data/eval-real-64 --clips-per-video 4 --context 8 --frames 24 --s 0,5,10 \
    -o out/eval/real
$BIN/ardiff eval continue --clips data/eval-bouncing --context 8 --frames 24 --s 5 --no-fvd -o out/eval/bouncing
for name in fopp naive-nondecreasing independent; do
    $BIN/ardiff eval continue --checkpoint out/ablation/$name.safetensors --clips data/eval-real-64 \
        --clips-per-video 4 --context 8 --frames 24 --s 5 -o out/ablation/$name
done
