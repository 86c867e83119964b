#!/usr/bin/env bash
# The GPU benchmarks in one call of under 9 minutes (the parts' limits: 150 + 180 + 90 + 60 s, and the set-up), on a
# Qwen2-0.5B-shaped model with random weights built from its public config (a CUDA machine here has no network and
# no model files; speed and memory do not depend on the weights' values, predictions and losses do, so those are read
# as numerics, not skill):
#   1. SFT: camelid (packing) vs transformers.Trainer + peft (padding), LoRA r16, bf16   (sft_throughput.py)
#   2. serving: camelid's engine vs sequential and static padded batch `generate`        (serve_throughput.py)
#   3. evaluation: camelid vs lm-evaluation-harness, MMLU and HellaSwag-format items      (eval_agreement.py)
# Each script replaces its own "cuda, ..." subsection of benchmarks/RESULTS.md; the machine line names the GPU.
#
#   bash benchmarks/gpu.sh prepare        # where the offline catalog and the package index are: writes
#                                         # artifacts/gpu-inputs/ (data, tokenizer, wheels) to take along
#   bash benchmarks/gpu.sh run [DIR]      # on the CUDA machine, in the repository root, artifacts/gpu-inputs beside;
#                                         # DIR (optional) receives RESULTS.md and the logs
#   bash benchmarks/gpu.sh smoke          # the run's plumbing on this CPU with a tiny model; writes no results
#
# The wheels are what the CUDA machine's Python 3.12 lacks for camelid's server and for lm-eval (its image has
# torch, transformers, peft, accelerate). LLaMA-Factory is not among them (its pins and its dependencies, gradio
# and trl among them, are more than one call can carry): its sides run only where `import llamafactory` works.
set -uo pipefail
cd "$(dirname "$0")/.."
IN=artifacts/gpu-inputs
mode=${1:-}

prepare() {
    local py=.venv/bin/python
    rm -rf "$IN" && mkdir -p "$IN/wheels"
    $py benchmarks/sft_throughput.py --save-inputs "$IN/sft" --examples 1024 || return 1
    $py benchmarks/serve_throughput.py --save-inputs "$IN/serve" || return 1
    $py benchmarks/eval_agreement.py --task mmlu --save-inputs "$IN/eval-mmlu" || return 1
    $py benchmarks/eval_agreement.py --task hellaswag --save-inputs "$IN/eval-hellaswag" || return 1
    # exact versions of this checkout's environment, for CPython 3.12 on x86-64 Linux, without their dependencies:
    # what `camelid serve` and lm-eval's scoring path import that the machine's image lacks (lm-eval's metric and
    # table packages load lazily and are not needed here)
    local names="fastapi starlette pydantic pydantic-core annotated-types typing-inspection opentelemetry-api uvicorn
        lm-eval datasets dill multiprocess more-itertools gguf"
    local pins=()
    for n in $names; do
        pins+=("$n==$($py -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$n")") || return 1
    done
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$IN/wheels" "${pins[@]}" || return 1
    du -sh "$IN"
}

# run_part NAME SECONDS CMD...: one benchmark under a time limit; a failure is reported and the next one runs
run_part() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | grep -v "it/s\]\|s/it\]" | tail -40
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

run() {
    local py=python3 device=cuda model=qwen2-0.5b out=()
    local sft=(--examples 1024 --eval-examples 32 --batch-size 8) serve=(--clients 1,4,16,64 --load-requests 5 --parts 1,2,3,4)
    local eval_sizes=()
    if [ "$mode" = smoke ]; then
        py=.venv/bin/python device=cpu model=qwen2-tiny out=(--out '')
        sft=(--examples 16 --eval-examples 4 --batch-size 4)
        serve=(--clients 1,4 --requests 2 --seq-requests 2 --max-tokens 8 --load-clients 4 --load-requests 2 \
            --turns 2 --parts 1,2,3,4)
        eval_sizes=(--camelid-dtypes float32,checked)
    elif [ -d "$IN/wheels" ]; then
        $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/camelid-site \
            "$IN"/wheels/*.whl || exit 1
        export PYTHONPATH=/tmp/camelid-site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    [ -d "$IN/sft" ] || { echo "$IN is missing: run 'bash benchmarks/gpu.sh prepare' where the catalog is"; exit 1; }
    if [ "$device" = cuda ]; then
        $py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    LOGS=${DEST:-$(mktemp -d)}
    mkdir -p "$LOGS"
    failed=()
    local sides=camelid,baseline
    if $py -c "import llamafactory" 2>/dev/null; then sides+=,llamafactory,llamafactory-neat; fi
    run_part sft 150 $py benchmarks/sft_throughput.py --inputs "$IN/sft" --random-model $model --device $device \
        --dtype bfloat16 --sides $sides --lf-python "$(command -v $py)" "${sft[@]}" "${out[@]}"
    run_part serve 180 $py benchmarks/serve_throughput.py --inputs "$IN/serve" --random-model $model \
        --dtype bfloat16 "${serve[@]}" "${out[@]}"
    run_part eval-mmlu 90 $py benchmarks/eval_agreement.py --task mmlu --inputs "$IN/eval-mmlu" \
        --random-model $model --device $device "${eval_sizes[@]}" "${out[@]}"
    run_part eval-hellaswag 60 $py benchmarks/eval_agreement.py --task hellaswag --inputs "$IN/eval-hellaswag" \
        --random-model $model --device $device "${eval_sizes[@]}" "${out[@]}"
    [ -n "${DEST:-}" ] && cp benchmarks/RESULTS.md "$DEST/"
    if [ ${#failed[@]} -gt 0 ]; then
        echo "failed: ${failed[*]} (logs in $LOGS)"
        exit 1
    fi
    echo "all parts ran; logs in $LOGS"
}

case "$mode" in
    prepare) prepare ;;
    run) DEST=${2:-} run ;;
    smoke) run ;;
    *) echo "usage: bash benchmarks/gpu.sh prepare | run [DIR] | smoke" >&2; exit 2 ;;
esac
