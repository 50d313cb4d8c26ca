#!/usr/bin/env bash
# GPU figures of docs/performance.md (issue 6, target 5): run from the repository root on a
# machine with one CUDA device (about 5 minutes on an H100; nothing is downloaded).
#
#   bash benchmarks/bench_gpu.sh                # PYTHON=/path/to/python to choose the interpreter
#
# Prints, in order: the card, the batched GMM refresh on CUDA (N=82,081, K=80) with its ratio to
# the scikit-learn loop on this host's CPU, the engine's state and full refresh on CUDA, the step
# ratio on ResNet-50 at 448 px with AMP (batch 64), and the CUDA-only tests (no device syncs in
# the engine's per-step calls, CUDA refresh == CPU refresh).
set -euo pipefail
PY=${PYTHON:-python}
OUT=${OUT:-.}
export OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
echo "== GMM refresh on CUDA (target 1 on GPU)"
"$PY" benchmarks/bench_gmm.py --device cuda --threads 8 --repeat 10 --sklearn-groups 160
echo "== engine state and full refresh on CUDA (target 3)"
"$PY" benchmarks/bench_engine_state.py --device cuda --threads 8 --repeat 5
echo "== step ratio, ResNet-50 at 448 px, AMP, batch 64 (target 2 on GPU)"
"$PY" benchmarks/bench_step.py --device cuda --amp --model resnet50 --image-size 448 --batch-size 64 \
    --workers 8 --threads 8 --num-batches 3 --rounds 4 --piece-repeat 10 --json "$OUT/bench_step_gpu.json"
echo "== CUDA-only tests"
"$PY" -m pytest tests/test_performance_options.py tests/test_gmm.py -q -m gpu
