"""The options beyond the paper's recipe, each measured alone and together, at equal
training time, on songs no run trained or validated on (issue 25).

  python benchmarks/ablation.py [--root runs/ablation] [--steps 1000]
  python benchmarks/ablation.py --smoke --root /tmp/ablation   # tiny: that it runs

Everything runs through the project's own commands, as a user would type them:

1. `python -m waveunet_jax.synthetic ROOT/heldout --tracks=1 --test_tracks=5 --seed=0`:
   the built-in corpus's test split (5 songs of 30 s), which no run below trains or
   validates on (each run trains on the 32 songs of 30 s that `experiments/small.py`
   writes under its workdir, and validates on the first).
2. For each run: `python -m waveunet_jax.main --config=experiments/small.py
   --workdir=ROOT/NAME --config.num_train_steps=N [options]`, then `python -m
   waveunet_jax.evaluate --workdir=ROOT/NAME --musdb_root=ROOT/heldout --wav
   --output_dir=ROOT/NAME/heldout` (museval, the best checkpoint). All runs have the
   same seed, so the same corpus, initial parameters and batches up to what the option
   changes.
3. The runs: `baseline` (small.py with the paper's loss, no average of the weights and
   gain augmentation alone: PAPER, set on every run's command line; `--steps` steps),
   then each option alone
   (OPTIONS), then `best`: every option whose held-out SDR, averaged over the sources
   (SiSEC median), beat the baseline's, together (not run when fewer than two did).
4. Equal training time: before the options run, the real train step of each run's
   config is timed on this machine (`common.TimedTrainer`: the trainer's loop
   body, batch and step), every run's trainer compiled first, then 5 rounds of
   `--timed_steps` steps with the runs in turn; a run's speed is the median over the
   rounds of its steps/s over the baseline's in the same round. Each run gets `--steps`
   x that ratio steps (its schedule shortened alike); ratios within `--equal_within`
   of 1 (timing noise on a shared CPU) count as equal.
5. The separation-time cost of test-time averaging: the winner (or the baseline when
   no option won) evaluated again with `--shifts=2`, and the separation seconds per
   second of audio with and without (evaluate's log, all but the first song, whose time
   includes compiling).

On your data: `--data_dir` (prepared for small.py) trains every run on it, and
`--test_root` scores on that folder's test split (wav stems, as `evaluate --wav` reads
them: MUSDB18-HQ or your own multitracks).

Written to ROOT: `ablation.json` (every figure) and `ablation.md` (the table
docs/training.md shows). Run again, it continues: `main` resumes a run from its checkpoint, `evaluate`
keeps the songs it scored, and the timings are kept in ROOT/timing.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from waveunet_jax import console, files
from waveunet_jax import workdir as workdir_lib

import common

FLAGS = flags.FLAGS
# The checkout the project's commands run in (`--config=experiments/small.py`).
CHECKOUT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "experiments/small.py"
# The paper's recipe in the fields the options change: every run sets them, so that the
# baseline stays the paper's whatever small.py's defaults become.
PAPER = {"loss.kind": "mse", "loss.stft_weight": 0.0, "optim.ema_decay": 0.0,
         "data.augmentations": ("gain",)}
# Each option: the config fields it sets instead.
OPTIONS = {
    "l1": {"loss.kind": "l1"},
    "stft": {"loss.stft_weight": 1.0},
    "ema": {"optim.ema_decay": 0.999},
    "polarity": {"data.augmentations": ("gain", "polarity")},
}
SOURCES = ("vocals", "accompaniment")


def fields_of(names) -> dict:
  """{config path: value} that the options `names` together set."""
  return {path: value for name in names for path, value in OPTIONS[name].items()}


def recipe(names) -> dict:
  """{config path: value} of every field a run with the options `names` sets: the
  paper's recipe, then the options'."""
  return {**PAPER, **fields_of(names)}


def flag(path: str, value) -> str:
  """`--config.PATH=VALUE` as ml_collections' config flags parse it."""
  if isinstance(value, tuple):
    value = "(" + "".join(f"{v!r}," for v in value) + ")"
  return f"--config.{path}={value}"


def run(command: list[str], log: pathlib.Path) -> str:
  """Runs a project command (Python's -m) with its output appended to `log`; its stderr
  (absl's log lines)."""
  print("$ " + " ".join(command[1:]), flush=True)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=CHECKOUT, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(CHECKOUT)})
  with log.open("a") as f:
    f.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
  if done.returncode:
    sys.exit(f"error: {' '.join(command[1:])} exited {done.returncode}; its output is in {log}:"
             f"\n{done.stderr[-2000:]}")
  print(f"  {time.perf_counter() - start:.0f} s", flush=True)
  return done.stderr


def config_spec(smoke: bool) -> str:
  """small.py, or with `smoke` its smoke variant, as --config takes it."""
  return f"{CONFIG}:smoke" if smoke else CONFIG


def timings(root: pathlib.Path, runs: dict[str, list[str]], smoke: bool, timed_steps: int,
            data_dir: pathlib.Path | None, rounds: int = 5) -> dict[str, float]:
  """Each run's steps/s relative to the baseline's, on the baseline's prepared data (kept
  in ROOT/timing.json): every run's trainer built and compiled first, then `rounds`
  rounds of `timed_steps` steps each, the runs in turn; a run's figure is the median over
  the rounds of its steps/s over the baseline's in the same round, so that load from
  other work, which moves between rounds, falls on both sides of each ratio."""
  path = root / "timing.json"
  kept = json.loads(path.read_text()) if path.exists() else {"relative": {}, "steps_per_s": {}}
  missing = [name for name in runs if name not in kept["relative"]]
  if not missing:
    return kept["relative"]
  runs = {name: runs[name] for name in ["baseline"] + [m for m in missing if m != "baseline"]}
  data_dir = data_dir or workdir_lib.Workdir(root / "baseline").synthetic_data_dir
  trainers, scratch = {}, pathlib.Path(tempfile.mkdtemp(prefix="timing-", dir=root))
  try:
    for name, names in runs.items():
      config = common.load_config(config_spec(smoke))
      config.data.data_dir = str(data_dir)
      for field, value in recipe(names).items():
        group, key = field.split(".")
        config[group][key] = value
      trainers[name] = common.TimedTrainer(config, "device", scratch / name)
    measured = {name: [] for name in runs}
    for _ in range(rounds):
      for name, trainer in trainers.items():
        measured[name].append(trainer.steps_per_s(timed_steps))
  finally:
    for trainer in trainers.values():
      trainer.close()
    shutil.rmtree(scratch)  # the trainers' workdirs: nothing kept
  relative = {name: statistics.median(r / b for r, b in zip(rates, measured["baseline"]))
              for name, rates in measured.items()}
  for name, rates in measured.items():
    print(f"  {name}: {relative[name]:.3f} of the baseline's steps/s (rounds: "
          + ", ".join(f"{r:.3f}" for r in rates) + " steps/s)", flush=True)
  kept["relative"].update({n: v for n, v in relative.items() if n in missing})
  kept["steps_per_s"].update({n: v for n, v in measured.items() if n in missing})
  files.write_text_atomic(path, json.dumps(kept, indent=1) + "\n")
  return kept["relative"]


def train_and_score(root: pathlib.Path, name: str, names: list[str], steps: int,
                    smoke: bool, heldout: pathlib.Path, data_dir: pathlib.Path | None) -> dict:
  workdir, log = root / name, root / f"{name}.log"
  start = time.perf_counter()
  run([sys.executable, "-m", "waveunet_jax.main", f"--config={config_spec(smoke)}", f"--workdir={workdir}",
       f"--config.num_train_steps={steps}",
       *([f"--config.data.data_dir={data_dir}"] if data_dir else []),
       *(flag(p, v) for p, v in recipe(names).items())], log)
  train_s = time.perf_counter() - start
  summary = score(workdir, heldout, workdir / "heldout", log)
  return {"options": names, "fields": {p: list(v) if isinstance(v, tuple) else v
                                       for p, v in fields_of(names).items()},
          "steps": steps, "train_wall_s": train_s, **summary}


def score(workdir: pathlib.Path, heldout: pathlib.Path, out: pathlib.Path,
          log: pathlib.Path, extra: tuple[str, ...] = ()) -> dict:
  """Held-out SDR (SiSEC and pooled medians per source) and separation seconds per
  second of audio (all songs but the first, which compiles; kept in
  OUT/separation_timing.json, for an evaluate that resumes has nothing to time)."""
  stderr = run([sys.executable, "-m", "waveunet_jax.evaluate", f"--workdir={workdir}",
                f"--musdb_root={heldout}", "--wav", f"--output_dir={out}", *extra], log)
  summary = json.loads((out / "summary.json").read_text())
  sdr = {s: {k: summary["model"][s]["SDR"][k] for k in ("sisec_median", "pooled_median")}
         for s in SOURCES}
  timed = [(float(a), float(s)) for a, s in re.findall(
      r"([\d.]+) s of audio in [\d.]+ s \(separation ([\d.]+) s", stderr)][1:]
  kept = out / "separation_timing.json"  # evaluate resumed scores nothing: the first's
  if timed:
    files.write_text_atomic(kept, json.dumps(
        sum(s for _, s in timed) / sum(a for a, _ in timed)) + "\n")
  return {"sdr": sdr, "separation_s_per_audio_s":
          json.loads(kept.read_text()) if kept.exists() else None}


def mean_sdr(result: dict) -> float:
  """The SiSEC median SDR averaged over the sources; NaN where a source has none (a
  song of silence or too short for museval's windows)."""
  values = [result["sdr"][s]["sisec_median"] for s in SOURCES]
  return float("nan") if None in values else sum(values) / len(values)


def winners(results: dict, options: list[str]) -> list[str]:
  """The options that beat the baseline alone (NaN beats nothing)."""
  return [o for o in options if mean_sdr(results[o]) > mean_sdr(results["baseline"])]


def _db(value: float | None, form: str = ".2f") -> str:
  return "n/a" if value is None or value != value else format(value, form)


def table(results: dict, shifts: dict | None) -> str:
  base = results["baseline"]
  lines = ["| run | options | steps | " + " | ".join(
      f"{s} SDR SiSEC / pooled" for s in SOURCES) + " | mean SiSEC vs baseline |",
      "|---|---|--:|" + "---|" * len(SOURCES) + "--:|"]
  for name, r in results.items():
    options = ", ".join(f"{p}={v}" for p, v in r["fields"].items()) or "the paper's recipe"
    lines.append(f"| {name} | {options} | {r['steps']} | " + " | ".join(
        f"{_db(r['sdr'][s]['sisec_median'])} / {_db(r['sdr'][s]['pooled_median'])}"
        for s in SOURCES) + f" | {_db(mean_sdr(r) - mean_sdr(base), '+.2f')} |")
  if shifts:
    lines += ["", f"Test-time averaging on `{shifts['run']}`: separation "
              f"{_db(shifts['plain_s_per_audio_s'], '.3f')} s per second of audio without, "
              f"{_db(shifts['shifts_s_per_audio_s'], '.3f')} s with --shifts=2; SDR SiSEC / pooled "
              "with --shifts=2: " + ", ".join(
                  f"{s} {_db(shifts['sdr'][s]['sisec_median'])} / "
                  f"{_db(shifts['sdr'][s]['pooled_median'])}" for s in SOURCES) + "."]
  return "\n".join(lines) + "\n"


def _define_flags() -> None:
  flags.DEFINE_string("root", "runs/ablation", "where the runs go")
  flags.DEFINE_integer("steps", None, "the baseline's training steps (1000; --smoke: 4)",
                       lower_bound=1)
  flags.DEFINE_list("options", list(OPTIONS), f"options to run alone (of {', '.join(OPTIONS)})")
  flags.DEFINE_integer("timed_steps", 10, "steps timed per run for equal training time",
                       lower_bound=1)
  flags.DEFINE_float("equal_within", 0.10, "speed ratios this close to 1 count as equal (on "
                     "a shared 2-core CPU one run's rounds of 10 steps spread by +-20 %)")
  flags.DEFINE_string("data_dir", None, "train on this prepared data (python -m "
                      "waveunet_jax.prepare --config=experiments/small.py ...) instead of "
                      "small.py's synthetic corpus")
  flags.DEFINE_string("test_root", None, "score on this folder's test split (MUSDB18-HQ "
                      "layout: test/<track>/<stem>.wav, or your own stems) instead of 5 "
                      "generated songs")
  flags.DEFINE_bool("smoke", False,
                    "experiments/small.py:smoke, 2 held-out songs of 3 s: that it runs")
  flags.register_validator("options", _known_options)
  # Checked before anything trains: a wrong folder would otherwise stop the run at
  # its first `main` or, for --test_root, only after the baseline had trained.
  flags.register_validator("data_dir", _data_dir)
  flags.register_validator("test_root", _test_root)


def _known_options(options: list[str]) -> bool:
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise flags.ValidationError(f"--options: unknown {', '.join(unknown)}; choose from "
                                f"{', '.join(OPTIONS)}")
  return True


def _data_dir(path: str | None) -> bool:
  if path and not pathlib.Path(path).is_dir():
    raise flags.ValidationError(f"--data_dir: {path} is not a folder; prepare one with python "
                                "-m waveunet_jax.prepare --config=experiments/small.py ...")
  return True


def _test_root(path: str | None) -> bool:
  if path and not (pathlib.Path(path) / "test").is_dir():
    raise flags.ValidationError(f"--test_root: {path} has no test/ folder (the MUSDB18-HQ "
                                "layout: test/<track>/<stem>.wav)")
  return True


def main(argv: list[str]) -> None:
  console.no_arguments(argv)
  steps = FLAGS.steps or (4 if FLAGS.smoke else 1000)
  options = FLAGS.options
  root = pathlib.Path(FLAGS.root).resolve()
  root.mkdir(parents=True, exist_ok=True)
  data_dir = pathlib.Path(FLAGS.data_dir).resolve() if FLAGS.data_dir else None
  heldout = pathlib.Path(FLAGS.test_root).resolve() if FLAGS.test_root else root / "heldout"
  if not FLAGS.test_root and not (heldout / "test").exists():
    run([sys.executable, "-m", "waveunet_jax.synthetic", str(heldout), "--tracks=1",
         f"--test_tracks={2 if FLAGS.smoke else 5}", "--seed=0",
         *(["--seconds=3"] if FLAGS.smoke else [])], root / "heldout.log")

  results = {"baseline": train_and_score(root, "baseline", [], steps, FLAGS.smoke,
                                         heldout, data_dir)}
  runs = {"baseline": [], **{o: [o] for o in options}}
  rates = timings(root, runs, FLAGS.smoke, FLAGS.timed_steps, data_dir)

  def steps_for(name: str) -> int:
    ratio = rates[name]
    return steps if abs(ratio - 1) <= FLAGS.equal_within else max(1, round(steps * ratio))

  for name in options:
    results[name] = train_and_score(root, name, [name], steps_for(name), FLAGS.smoke, heldout,
                                    data_dir)
  won = winners(results, options)
  if len(won) >= 2:
    runs["best"] = won
    rates = timings(root, runs, FLAGS.smoke, FLAGS.timed_steps, data_dir)
    results["best"] = train_and_score(root, "best", won, steps_for("best"), FLAGS.smoke,
                                      heldout, data_dir)
  winner = max(results, key=lambda n: (mean_sdr(results[n]) == mean_sdr(results[n]),
                                         mean_sdr(results[n])))  # NaN loses
  shifts = score(root / winner, heldout, root / winner / "heldout-shifts2",
                 root / f"{winner}.log", ("--shifts=2",))
  shifts = {"run": winner, "plain_s_per_audio_s": results[winner]["separation_s_per_audio_s"],
            "shifts_s_per_audio_s": shifts.pop("separation_s_per_audio_s"), **shifts}
  out = {"steps": steps, "relative_steps_per_s": rates, "equal_within": FLAGS.equal_within,
         "runs": results, "winner": winner, "shifts": shifts}
  files.write_text_atomic(root / "ablation.json", json.dumps(out, indent=1) + "\n")
  files.write_text_atomic(root / "ablation.md", table(results, shifts))
  print(table(results, shifts), flush=True)
  print(f"winner: {winner}", flush=True)


if __name__ == "__main__":
  console.run_program(main, _define_flags, usage_status=2)
