#!/usr/bin/env bash
# Reproduce the shipped default model (assets/ardiff-default.safetensors) and its evaluation
# (assets/MODEL_CARD.md) from the source clips. About an hour and a half on two CPU cores; minutes on a GPU.
#
#   scripts/train-default-model.sh CLIPS_DIR [WORK_DIR]
#
# CLIPS_DIR holds big_buck_bunny_full.mp4, bigbuckbunny.mp4, earth.mp4, vtest.avi (training) and
# carphone_pristine.mp4, bikes.mp4 (held out). WORK_DIR (default: .) gets data/, runs/ and out/.
# The recipe is trainer/configs/wide-quick.toml; the phases below were chosen on validation clips (camera
# footage over a still kept out of training), never on the held-out clips (the model card says how).
set -euo pipefail
CLIPS=$(cd "${1:?usage: $0 CLIPS_DIR [WORK_DIR]}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "${2:-.}"
BIN=${ARDIFF_BIN:-$ROOT/.venv/bin}
K=${ABLATION_STEP:-1500}    # the scheduler ablation compares the runs at this step

# 1. Data: decode once at 64x64. The VAE's frame mix takes every 4th frame of the film, so the camera
#    footage is not drowned by animation; the DiT trains on every frame (motion at the source rate).
$BIN/ardiff-train prepare "$CLIPS"/big_buck_bunny_full.mp4 "$CLIPS"/bigbuckbunny.mp4 "$CLIPS"/earth.mp4 \
    "$CLIPS"/vtest.avi -o data/train-64
$BIN/ardiff-train prepare "$CLIPS"/big_buck_bunny_full.mp4 "$CLIPS"/bigbuckbunny.mp4 -o data/vae-64 --frame-stride 4
$BIN/ardiff-train prepare "$CLIPS"/earth.mp4 "$CLIPS"/vtest.avi -o data/vae-64
$BIN/ardiff-train prepare "$CLIPS"/carphone_pristine.mp4 "$CLIPS"/bikes.mp4 -o data/eval-real-64 \
    --split-shots --min-frames 32
$BIN/ardiff-train prepare synthetic:bouncing -o data/eval-bouncing --count 32 --frames 32 --seed 1

# 2. Training: the AR-VAE (per frame from a local-PCA start, then the decoder's temporal path, then a seam
#    fine-tune of the whole decoder that adds its border mixer), the DiT with FoPP in three phases, and the
#    ablation runs to step K.
$BIN/ardiff-train vae-image    --config wide-quick --run-dir runs/vae-image
$BIN/ardiff-train vae-temporal --config wide-quick --set vae=runs/vae-image --run-dir runs/vae-temporal
$BIN/ardiff-train vae-temporal --config wide-quick --set vae=runs/vae-temporal --set temporal_rest_lr_scale=1.0 \
    --set seam_weight=2 --set decoder_latent_noise=0.15 --set mixer_channels=32 --set data=data/train-64 \
    --set num_frames=8 --set lr=1e-4 --set min_lr=1e-5 --set max_steps=1500 --set checkpoint_every=100 \
    --run-dir runs/vae-seams
# DiT phase 1: lr 3e-4 to step 3,000 (on camera footage the DiT peaks there); phase 2: lr 3e-5 to 6,000;
# phase 3: the continuation task (a clean prefix on 95% of clips) to 7,000.
$BIN/ardiff-train diffusion    --config wide-quick --set vae=runs/vae-image --run-dir runs/dit
$BIN/ardiff-train diffusion    --config wide-quick --run-dir runs/dit --resume --set lr=3e-5 --set max_steps=6000
$BIN/ardiff-train diffusion    --config wide-quick --run-dir runs/dit --resume --set lr=3e-5 --set max_steps=7000 \
    --set clean_prefix_p=0.95
for sched in naive-nondecreasing independent; do
    $BIN/ardiff-train diffusion --config wide-quick --set vae=runs/vae-image --set scheduler=$sched \
        --set max_steps=$K --run-dir runs/dit-$sched
done

# 3. Package (bf16 weights: half the size, the same samples to within rounding). The ablation's DiTs go with
#    the temporal stage's decoder, as measured in the model card.
$BIN/ardiff-train package --vae runs/vae-seams --diffusion runs/dit -o assets/ardiff-default.safetensors --dtype bf16
step=$(printf "step-%08d" "$K")
$BIN/ardiff-train package --vae runs/vae-temporal --diffusion runs/dit/checkpoints/$step -o out/ablation/fopp.safetensors --dtype bf16
for sched in naive-nondecreasing independent; do
    $BIN/ardiff-train package --vae runs/vae-temporal --diffusion runs/dit-$sched -o out/ablation/$sched.safetensors --dtype bf16
done

# 4. Evaluation (the numbers in assets/MODEL_CARD.md).
$BIN/ardiff eval vae --clips data/eval-real-64 --frames 32 --clips-per-video 4 --precision fp32 -o out/eval/vae
$BIN/ardiff eval continue --clips data/eval-real-64 --clips-per-video 4 --context 8 --frames 24 --s 0,5,10 \
    --precision fp32 -o out/eval/real
$BIN/ardiff eval continue --clips data/eval-bouncing --context 8 --frames 24 --s 5 --no-fvd --precision fp32 \
    -o out/eval/bouncing
$BIN/ardiff eval adapt --clips data/eval-real-64 --frames 16 --precision fp32 -o out/eval/adapt
for name in fopp naive-nondecreasing independent; do
    $BIN/ardiff eval continue --checkpoint out/ablation/$name.safetensors --clips data/eval-real-64 \
        --clips-per-video 4 --context 8 --frames 24 --s 5 --precision fp32 -o out/ablation/$name
done
