#!/usr/bin/env bash
# Table 6 of BalanceMix, TResNet-L 640x640, through ML-Decoder's train.py (Alibaba-MIIL/ML_Decoder 8a9e984)
# patched with `balancemix-patch-ml-decoder $ML_DECODER`. Expected: 91.7 mAP (BalanceMix, Table 6); ML-Decoder TResNet-L 640: 91.1.
# The result is the last "highest_mAP" line of the log (best epoch of max(regular, EMA)).
# TResNet-L: ML-Decoder's own model when inplace-abn is installed (its decoder head is swapped for
# balancemix_timm's on torch >= 2.1, same weights), else timm's tresnet_v2_l (same layout).
# Weights are not downloaded by balancemix_timm: put the file at $WEIGHTS first.
# Extra arguments are passed on, e.g. --bm-resume models/balancemix-last.pth or --bm-base-loss asl.
# The ASL baseline of the same setting: the same command without the --balancemix/--bm-* lines.
#   ML_DECODER=/src/ML_Decoder COCO=/data/coco WEIGHTS=... bash configs/ml_decoder/table6_tresnet_l_640.sh
set -euo pipefail
ML_DECODER=${ML_DECODER:-$PWD}
COCO=${COCO:-/data/coco}
WEIGHTS=${WEIGHTS:-$ML_DECODER/tresnet_l_pretrain_ml_decoder.pth}
cd "$ML_DECODER"
mkdir -p models
python train.py \
  --data "$COCO" \
  --model-name tresnet_l \
  --model-path "$WEIGHTS" \
  --num-classes 80 \
  --image-size 640 \
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
  "$@" 2>&1 | tee "models/table6_tresnet_l_640.log"
