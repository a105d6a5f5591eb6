"""Trains a Wave-U-Net: flags only; the work is in `train.train_and_evaluate`.

  python -m waveunet_jax.main --config=experiments/shallow.py:smoke --workdir=/tmp/smoke
  python -m waveunet_jax.main --config=experiments/deep.py:M4 --workdir=runs/m4 \\
      --config.data.data_dir=/data/tfds --config.optim.learning_rate=3e-4

Re-running the same command resumes from the workdir's checkpoints.

Several processes (the hosts of a TPU slice or a GPU cluster, or one process per GPU)
run the same command, each with --distributed (JAX finds the others on Cloud TPU,
SLURM and Open MPI) or with --coordinator_address=HOST:PORT --num_processes=N
--process_id=I (I = 0 on the host at that address); see docs/multi-device.md.
"""

import shlex
import sys

from absl import flags, logging

from waveunet_jax import console, shared_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program (shared_flags says why).
  shared_flags.define("config", "workdir",
                      workdir="Where checkpoints, logs and TensorBoard go.")
  flags.DEFINE_bool("distributed", False, "Join the other processes of the run, found by "
                    "JAX (Cloud TPU, SLURM, Open MPI).")
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, which every "
                      "process of the run connects to (with --num_processes and "
                      "--process_id; implies --distributed).")
  flags.DEFINE_integer("num_processes", None, "Processes of the run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 to --num_processes - 1 "
                       "(0 runs at --coordinator_address).")
  flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds after which a silent process "
                       "(killed, crashed) ends the run of the others, which would otherwise "
                       "wait for it forever.", lower_bound=1)
  flags.DEFINE_integer("coordinator_timeout", 300, "Seconds the processes wait at the start "
                       "for the coordinator (process 0) and for each other before giving up.",
                       lower_bound=1)
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])} (the flags are --config, "
             "--workdir, --config.<group>.<field> and the multi-process ones: --distributed, "
             "--coordinator_address, --num_processes, --process_id, --heartbeat_timeout, "
             "--coordinator_timeout)")
  if not FLAGS.workdir.strip():  # "" would be the current directory
    sys.exit("error: --workdir is empty: name a folder for the run's checkpoints and logs")
  console.import_tensorflow()  # for tf.data, off the accelerators (their memory is JAX's)
  import jax

  from waveunet_jax import distributed, files, models, signals, train, workdir
  from waveunet_jax.data import records

  named = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.distributed or any(v is not None for v in named):
    try:
      distributed.connect(*named, heartbeat_timeout=FLAGS.heartbeat_timeout,
                          coordinator_timeout=FLAGS.coordinator_timeout)
    except distributed.DistributedError as e:
      sys.exit(f"error: {e}")

  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (models.ConfigError, records.DataError, train.TrainingError, workdir.WorkdirError,
          distributed.DistributedError, files.WriteError) as e:
    sys.exit(f"error: {e}")
  except signals.Interrupted as e:
    # 128 + the signal, as a shell reports a program its signal ended.
    print(f"{e}; resume with: {resume_command()}", file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt as e:  # a second signal, or one before the loop began
    console.exit_interrupted(e, "re-running the same command resumes from the last "
                             "checkpoint, if there is one")
  if jax.process_index() == 0:
    console.done(next_steps(FLAGS.workdir))


def next_steps(workdir: str) -> str:
  """The closing lines of a finished run: where it is and how to use it."""
  python = shlex.quote(console.python())
  workdir_arg = shlex.quote(workdir)
  return (f"done: checkpoints and TensorBoard logs are in {workdir} "
          f"(tensorboard --logdir={workdir_arg}). Separate your songs with the best "
          f"checkpoint:\n  {python} -m waveunet_jax.separate --workdir={workdir_arg} "
          f"--output_dir=separated SONG.wav")


def resume_command() -> str:
  """This process's command line, to run again: `python -m waveunet_jax.main ...`."""
  return shlex.join([console.python(), "-m", "waveunet_jax.main", *sys.argv[1:]])


def cli() -> None:
  """The program `python -m waveunet_jax.main` (and the console script waveunet-train)."""
  console.run_program(main, _define_flags, install=("train", "training"))


if __name__ == "__main__":
  cli()
