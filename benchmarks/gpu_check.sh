#!/usr/bin/env bash
# The GPU figures in one call of a lent GPU machine (no TensorFlow there), within a
# wall-clock budget:
#   1. the wheels in $WHEELS installed into /tmp/site (ml-collections, soundfile, soxr,
#      cffi, pycparser: what the image lacks), the GPU, JAX and package versions;
#   2. benchmarks/precision.py: bfloat16 against float32 training of the smoke config
#      (finite, final loss within 10 %);
#   3. benchmarks/run.py --accelerator_figures, one process per model (deep M4 first,
#      the smaller): float32 and bfloat16 train utilisation, the largest batch,
#      model-only and end-to-end separation; no input pipeline (TensorFlow) and no
#      peak-RSS runs;
#   4. a summary: the tables again and the examples/s the input pipeline must
#      deliver to keep up with each train step.
# Run from the repository root that holds .whl (the checkout that travels):
#   bash benchmarks/gpu_check.sh             # this tree is that checkout
#   bash .gpucheck/benchmarks/gpu_check.sh   # a carried export of another branch
# Writes $OUT/{log,stderr.log,env.txt,precision.json,run_*.json} ($OUT: the device
# tool's folder; elsewhere /tmp/gpu_check_out). Each step gets at most what is left of
# BUDGET_S; a step cut short keeps what it printed. Knobs (environment, defaults):
#   BUDGET_S=390 PRECISION_CONFIGS=shallow:smoke PRECISION_STEPS=200 PRECISION_MAX_S=150
#   RUN_MODELS="deep M4,shallow" TRAIN_STEPS=20 MAX_BATCH=1024 RUN_FLAGS= RUN_MAX_S=200
#   WHEELS=.whl SITE=/tmp/site PYTHON=python3; SKIP_PRECISION=1 or SKIP_RUN=1 leave a step out.
set -u -o pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu_check_out}
WHEELS=${WHEELS:-$PWD/.whl}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
BUDGET_S=${BUDGET_S:-390}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

left() { echo $((BUDGET_S - SECONDS)); }

# step NAME CAP COMMAND...: runs COMMAND for at most min(CAP, what is left), its
# stderr into stderr.log (XLA's out-of-memory reports are long), the tail of it on failure.
step() {
  local name=$1 cap=$2 t
  shift 2
  t=$(left)
  ((t > cap)) && t=$cap
  if ((t < 30)); then echo "== $name: skipped, $(left) s of the budget left"; return; fi
  echo "== $name (at most $t s, $SECONDS s in)"
  echo "== $name" >>"$OUT/stderr.log"
  local began=$SECONDS rc=0
  timeout --kill-after=10 "$t" "$@" 2>>"$OUT/stderr.log" || rc=$?
  echo "== $name: exit $rc after $((SECONDS - began)) s$( ((rc == 124)) && echo ' (cut at its time limit)')"
  if ((rc != 0)); then tail -n 25 "$OUT/stderr.log" | sed 's/^/   | /'; fi
}

main() {
  echo "== gpu_check: $HERE, budget $BUDGET_S s, out $OUT"
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
for name in ("jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "chex",
             "numpy", "ml_collections", "soundfile", "soxr", "tensorflow"):
  try:
    print(f"  {name} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"  {name} -")
stats = jax.devices()[0].memory_stats() or {}
print("  device bytes_limit", stats.get("bytes_limit"), "| XLA_PYTHON_CLIENT_MEM_FRACTION",
      os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default"), "| cores", os.cpu_count())
EOF
  } | tee "$OUT/env.txt"

  if [[ -z ${SKIP_PRECISION:-} ]]; then
    step precision "${PRECISION_MAX_S:-150}" "$PY" "$HERE/benchmarks/precision.py" \
      --configs="${PRECISION_CONFIGS:-shallow:smoke}" --steps="${PRECISION_STEPS:-200}" \
      --json="$OUT/precision.json"
  fi
  if [[ -z ${SKIP_RUN:-} ]]; then
    local models name
    IFS=, read -ra models <<<"${RUN_MODELS:-deep M4,shallow}"
    for name in "${models[@]}"; do
      # shellcheck disable=SC2086  # RUN_FLAGS: several flags
      step "run.py $name" "${RUN_MAX_S:-200}" "$PY" "$HERE/benchmarks/run.py" \
        --accelerator_figures --skip_pipeline --skip_memory --models="$name" \
        --train_steps="${TRAIN_STEPS:-20}" --max_batch="${MAX_BATCH:-1024}" \
        --json="$OUT/run_${name// /_}.json" ${RUN_FLAGS:-}
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
    search = m.get("gpu", {}).get("largest_batch_search")
    if search:
      print(f"{name} largest batch: {m['gpu']['largest_batch']} (guess {search['guess']}, "
            f"tried {search['tried']}; memory limit {r['machine'].get('device_memory_limit_gib')} GiB)")
EOF
  echo "== gpu_check done in $SECONDS s"
}

main 2>&1 | tee "$OUT/log"
