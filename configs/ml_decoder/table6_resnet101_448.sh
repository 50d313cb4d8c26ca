#!/usr/bin/env bash
# Table 6 of BalanceMix, ResNet-101 448x448, through ML-Decoder's train.py (Alibaba-MIIL/ML_Decoder 8a9e984)
# patched with `balancemix-patch-ml-decoder $ML_DECODER`. Expected: 87.4 mAP (BalanceMix, Table 6); ML-Decoder ResNet-101 448: 87.1 (unreleased Open Images pretrain).
# The result is the last "highest_mAP" line of the log (best epoch of max(regular, EMA)).
# ResNet-101 is built by balancemix_timm (--bm-model): timm resnet101 + ML-Decoder head, ImageNet
# normalisation applied inside the model (ML-Decoder's transforms stop at ToTensor).
# Weights are not downloaded by balancemix_timm: put the file at $WEIGHTS first.
# Extra arguments are passed on, e.g. --bm-resume models/balancemix-last.pth or --bm-base-loss asl.
# The ASL baseline of the same setting: the same command without the --balancemix/--bm-* lines.
#   ML_DECODER=/src/ML_Decoder COCO=/data/coco WEIGHTS=... bash configs/ml_decoder/table6_resnet101_448.sh
set -euo pipefail
ML_DECODER=${ML_DECODER:-$PWD}
COCO=${COCO:-/data/coco}
WEIGHTS=${WEIGHTS:-/weights/resnet101_in1k.pth}
cd "$ML_DECODER"
mkdir -p models
python train.py \
  --data "$COCO" \
  --model-name resnet101 \
  --model-path "$WEIGHTS" \
  --bm-model resnet101 \
  --num-classes 80 \
  --image-size 448 \
  --batch-size 56 \
  --lr 1e-4 \
  --workers 8 \
  --use-ml-decoder 1 --num-of-groups -1 --decoder-embedding 768 \
  --balancemix \
  --bm-alpha 4 --bm-eps 0.975 --bm-warmup-epochs 10 \
  --bm-minority-sampler --bm-label-management full \
  --bm-base-loss bce --bm-reduction sum \
  --bm-label-source views --bm-num-views 2 \
  --bm-seed 0 --bm-checkpoint-dir models/ \
  "$@" 2>&1 | tee "models/table6_resnet101_448.log"
