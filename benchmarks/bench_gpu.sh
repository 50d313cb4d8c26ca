#!/usr/bin/env bash
# GPU figures of docs/performance.md (issue 6, target 5) and the CUDA-only tests: run from the
# repository root on a machine with one CUDA device (about 5 minutes on an H100 or H200;
# nothing is downloaded).
#
#   bash benchmarks/bench_gpu.sh                # PYTHON=/path/to/python to choose the interpreter
#   ONLY="gmm tests" bash benchmarks/bench_gpu.sh   # a subset of: tests gmm engine step
#
# Prints, in order: the card; the CUDA-only tests (no device syncs in the engine's per-step
# calls, CUDA refresh == CPU refresh, tests/test_cuda.py: every method trained with AMP, the
# ML-Decoder head, resume); the batched GMM refresh on CUDA (N=82,081, K=80) with its ratio to
# the scikit-learn loop on this host's CPU; the engine's state and full refresh on CUDA; the step
# ratio on ResNet-50 at 448 px with AMP (batch 64). A failing part does not stop the others;
# the exit status is non-zero if any failed.
set -uo pipefail
PY=${PYTHON:-python}
OUT=${OUT:-.}
ONLY=${ONLY:-tests gmm engine step}
export OMP_WAIT_POLICY=PASSIVE
failed=()
part() {  # part NAME COMMAND...: run COMMAND if NAME is in $ONLY, remember a failure
    local name=$1; shift
    [[ " $ONLY " == *" $name "* ]] || return 0
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" || failed+=("$name")
    echo "== $name took $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, timm, sklearn; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'timm', timm.__version__, 'sklearn', sklearn.__version__)"
part tests "$PY" -m pytest tests -q -m gpu -p no:cacheprovider
part gmm "$PY" benchmarks/bench_gmm.py --device cuda --threads 8 --repeat 10 --sklearn-groups 160 --compare-float64
part engine "$PY" benchmarks/bench_engine_state.py --device cuda --threads 8 --repeat 5
part step "$PY" benchmarks/bench_step.py --device cuda --amp --model resnet50 --image-size 448 \
    --batch-size 64 --workers 8 --threads 8 --num-batches 3 --rounds 4 --piece-repeat 10 \
    --json "$OUT/bench_step_gpu.json"
if ((${#failed[@]})); then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all parts passed"
