#!/usr/bin/env bash
# The GPU checks of issue 24 in one call of a lent GPU machine (no TensorFlow there),
# each part bounded so that one part's hang cannot eat the call (BUDGET_S in all):
#   1. the wheels in $WHEELS installed into /tmp/site (ml-collections, soundfile, soxr,
#      cffi, pycparser: what the image lacks), the GPU, JAX and package versions;
#   2. the shallow network's train step compiled (not run) at batch 2, 4, 8, 16 with
#      --xla_gpu_autotune_level=0 and with the default: compile time, XLA's memory
#      analysis, and XLA's log lines about workspace, autotuning, rematerialisation
#      and running out of memory (benchmarks/gpu_check.py compile);
#   3. the shallow network trained at batch 8 and 16 (float32, autotune level
#      $SHALLOW_AUTOTUNE): steps/s and utilisation by flops.py against the chip's
#      dense peak and the measured matmul (gpu_check.py train);
#   4. M4 in bfloat16 at batch 16, 32, 64 and the largest power of two up to
#      MAX_BATCH whose compiled step fits the device's memory: the same figures;
#   5. a jax.profiler trace of a few M4 bfloat16 steps at batch 16, summarised as
#      busy time per class of op (conv forward, conv input / kernel gradients,
#      matmul, elementwise fusions, copies), the device's idle share and top ops;
#   6. a persistent compilation cache: the M4 bfloat16 step compiled in a first and
#      a second fresh process sharing the cache;
#   7. M4 in bfloat16 at batch 16, 32, 64 fed by the device sampler (training's
#      default) against one fixed batch, the sampler alone, host CPU s per step, on
#      random windows made in memory (gpu_check.py sampler; last: the budget cuts it
#      first);
#   8. optional (RUN_PRECISION=1, RUN_RUNPY=1; measured on an H200 before):
#      benchmarks/precision.py and benchmarks/run.py --accelerator_figures;
#   9. a summary: the tables of 8 and the examples/s the input pipeline must deliver.
# Run from the repository root that holds .whl (the checkout that travels):
#   bash benchmarks/gpu_check.sh             # this tree is that checkout
#   bash benchmarks/gpu_check.sh --smoke     # every part on tiny networks, on any
#                                            # machine (CI, on the CPU): that it runs
# Writes $OUT/{log,*.stderr.log,env.txt,*.json} ($OUT: the device tool's folder;
# elsewhere /tmp/gpu_check_out). A part cut short keeps what it printed (its RESULT
# lines). Knobs (environment, defaults):
#   BUDGET_S=500 SHALLOW_AUTOTUNE=0 MAX_BATCH=1024 STEPS=10 PROFILE_STEPS=5
#   COMPILE_MAX_S=90 TRAIN_MAX_S=110 PROFILE_MAX_S=50 CACHE_MAX_S=80 SAMPLER_MAX_S=90
#   RUN_PRECISION= PRECISION_CONFIGS=experiments/shallow.py:smoke PRECISION_STEPS=200 PRECISION_MAX_S=150
#   RUN_RUNPY= RUN_MODELS="deep M4,shallow" TRAIN_STEPS=20 RUN_FLAGS= RUN_MAX_S=200
#   WHEELS=.whl SITE=/tmp/site PYTHON=python3
set -u -o pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu_check_out}
WHEELS=${WHEELS:-$PWD/.whl}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
SMOKE=
if [[ ${1:-} == --smoke ]]; then SMOKE=--smoke; fi
BUDGET_S=${BUDGET_S:-500}
MIN_PART_S=${MIN_PART_S:-30}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

left() { echo $((BUDGET_S - SECONDS)); }

# step NAME CAP COMMAND...: runs COMMAND for at most min(CAP, what is left), its
# stderr into $OUT/NAME.stderr.log (XLA's reports are long), its tail on failure.
step() {
  local name=$1 cap=$2 t log
  shift 2
  log="$OUT/${name//[^A-Za-z0-9_.-]/_}.stderr.log"
  t=$(left)
  ((t > cap)) && t=$cap
  if ((t < MIN_PART_S)); then echo "== $name: skipped, $(left) s of the budget left"; return; fi
  echo "== $name (at most $t s, $SECONDS s in)"
  local began=$SECONDS rc=0
  timeout --kill-after=10 "$t" "$@" 2>"$log" || rc=$?
  echo "== $name: exit $rc after $((SECONDS - began)) s$( ((rc == 124)) && echo ' (cut at its time limit)')"
  if ((rc != 0)); then tail -n 25 "$log" | sed 's/^/   | /'; fi
}

# xla_lines NAME: XLA's log lines of a part about memory and autotuning, at most 40.
xla_lines() {
  local log="$OUT/${1//[^A-Za-z0-9_.-]/_}.stderr.log"
  echo "-- XLA log lines of $1 (workspace, autotuning, rematerialisation, memory): $(
    grep -ciE 'workspace|autotun|remat|scratch|out of memory|resource_exhausted|bfc' "$log" 2>/dev/null || echo 0)"
  grep -iE 'workspace|autotun|remat|scratch|out of memory|resource_exhausted|bfc' "$log" 2>/dev/null \
    | cut -c1-300 | head -n 40 | sed 's/^/   | /'
}

main() {
  echo "== gpu_check${SMOKE:+ (smoke)}: $HERE, budget $BUDGET_S s, out $OUT"
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl || { echo "== wheels: install failed"; return 1; }
    export PYTHONPATH=$SITE:$HERE${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "== no wheels in $WHEELS: using the installed packages"
    export PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH}
  fi
  {
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    "$PY" - <<'EOF' 2>&1
import importlib.metadata as md, os, sys
import jax
print("python", sys.version.split()[0], "| jax", jax.__version__, "|", jax.devices())
for name in ("jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
             "orbax-checkpoint", "chex", "numpy", "ml_collections", "soundfile", "soxr",
             "tensorflow"):
  try:
    print(f"  {name} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"  {name} -")
stats = jax.devices()[0].memory_stats() or {}
print("  device bytes_limit", stats.get("bytes_limit"), "| XLA_PYTHON_CLIENT_MEM_FRACTION",
      os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default"), "| cores", os.cpu_count())
EOF
  } | tee "$OUT/env.txt"

  local check=("$PY" "$HERE/benchmarks/gpu_check.py") shallow_batches=2,4,8,16 m4=16,32,64
  local max_batch=${MAX_BATCH:-1024} steps=${STEPS:-10} profile_batch=16 shallow=experiments/shallow.py
  if [[ -n $SMOKE ]]; then  # the tiny M4 compiles fastest: the shallow parts' code paths
    check+=(--smoke); shallow_batches=1; m4=1; max_batch=2; steps=1; profile_batch=1
    shallow=experiments/deep.py:M4
  fi
  # XLA_FLAGS are read when the backend starts: one process per autotune level. The
  # autotuner's and rematerialisation's own log lines need their modules' VLOG.
  local vlog="conv_algorithm_picker=1,gemm_algorithm_picker=1,autotuner_util=1,hlo_rematerialization=1"
  for level in 0 default; do
    local flags=${XLA_FLAGS:-}
    [[ $level != default ]] && flags="$flags --xla_gpu_autotune_level=$level"
    XLA_FLAGS="$flags" TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=$vlog \
      step "compile $shallow autotune $level" "${COMPILE_MAX_S:-90}" "${check[@]}" compile \
      --config="$shallow" --batches=$shallow_batches
    xla_lines "compile $shallow autotune $level"
  done
  local tune=${SHALLOW_AUTOTUNE:-0} flags=${XLA_FLAGS:-}
  [[ $tune != default ]] && flags="$flags --xla_gpu_autotune_level=$tune"
  XLA_FLAGS="$flags" step "train $shallow float32" "${TRAIN_MAX_S:-110}" "${check[@]}" train \
    --config="$shallow" --batches=$([[ -n $SMOKE ]] && echo 1 || echo 8,16) --steps=$steps
  step "train M4 bfloat16" "${TRAIN_MAX_S:-110}" "${check[@]}" train --config=experiments/deep.py:M4 \
    --dtype=bfloat16 --batches=$m4 --largest=$max_batch --steps=$steps
  step "profile M4 bfloat16" "${PROFILE_MAX_S:-50}" "${check[@]}" profile --config=experiments/deep.py:M4 \
    --dtype=bfloat16 --batch=$profile_batch --steps=${PROFILE_STEPS:-5} --trace_dir="$OUT/trace"
  step "cache M4 bfloat16" "${CACHE_MAX_S:-80}" "${check[@]}" cache --config=experiments/deep.py:M4 \
    --dtype=bfloat16 --batch=$profile_batch --dir="$OUT/xla_cache"
  step "sampler M4 bfloat16" "${SAMPLER_MAX_S:-90}" "${check[@]}" sampler --config=experiments/deep.py:M4 \
    --dtype=bfloat16 --batches=$m4 --steps=$steps --windows=$([[ -n $SMOKE ]] && echo 4 || echo 64)

  if [[ -n ${RUN_PRECISION:-} ]]; then
    step precision "${PRECISION_MAX_S:-150}" "$PY" "$HERE/benchmarks/precision.py" \
      --configs="${PRECISION_CONFIGS:-experiments/shallow.py:smoke}" --steps="${PRECISION_STEPS:-200}" \
      --json="$OUT/precision.json" $SMOKE
  fi
  if [[ -n ${RUN_RUNPY:-} ]]; then
    local models name
    IFS=, read -ra models <<<"${RUN_MODELS:-deep M4,shallow}"
    for name in "${models[@]}"; do
      # shellcheck disable=SC2086  # RUN_FLAGS: several flags
      step "run.py $name" "${RUN_MAX_S:-200}" "$PY" "$HERE/benchmarks/run.py" \
        --accelerator_figures --skip_pipeline --skip_memory --models="$name" \
        --train_steps="${TRAIN_STEPS:-20}" --max_batch="$max_batch" \
        --json="$OUT/run_${name// /_}.json" $SMOKE ${RUN_FLAGS:-}
    done
  fi

  echo "== summary ($SECONDS s in)"
  "$PY" - "$HERE" "$OUT" <<'EOF' 2>&1
import json, pathlib, sys
here, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
sys.path.insert(0, str(here / "benchmarks"))
import precision, run
p = out / "precision.json"
if p.exists():
  for result in json.loads(p.read_text())["results"]:
    print(precision.report(result))
for f in sorted(out.glob("run_*.json")):
  r = json.loads(f.read_text())
  print(run.table(r))
  f32 = r["matmul_flops_per_s"] / 1e12
  if r["machine"]["backend"] == "gpu":
    print(f"float32 matmul {f32:.0f} TFLOP/s at JAX's default precision: "
          + ("above an H100/H200's plain FP32 peak (~67), so TF32 tensor cores"
             if f32 > 70 else "plain FP32 speed (no TF32)"))
  for name, m in r["models"].items():
    for dtype in ("float32", "bfloat16"):
      t = m.get("gpu", {}).get(dtype)
      if t:
        print(f"{name} {dtype}: the step consumes {t['steps_per_s'] * t['batch']:.1f} examples/s "
              f"(batch {t['batch']}): the input pipeline must deliver that to keep up")
EOF
  echo "== gpu_check done in $SECONDS s"
}

main 2>&1 | tee "$OUT/log"
