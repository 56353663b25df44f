"""The ``samx`` command: ``samx train``, ``samx compare``, ``samx presets``, ``samx methods``.

    samx compare                                     # the quick start: SGD vs SAM family
    samx train --preset saner-cifar10-cpu --set optimizer.name=sam --set epochs=5
    samx train --resume runs/saner-cifar10-cpu/sam   # continue a killed run exactly
    samx compare --preset fashion-mnist-noise-cpu --optimizers sgd,sam,saner,jsam,lsam
    samx train --preset saner-cifar10 --run-dir R --resume-if-exists   # start, or continue R

Exit status: 0 done (or nothing to do); 1 a file could not be written or read (a full disk, a
read-only directory: the message names it, and the run is resumable once it is fixed); 2 a
request refused before anything was written (a bad value, a run directory it must not touch
or that another process writes); 3 the run diverged (``samx compare``: one entry or more,
after writing the table); 75 stopped by SIGTERM (a preemption, a scheduler's notice) after
saving a checkpoint of the step: run the same command again to continue; 130 interrupted
(Ctrl-C), after saving likewise.

Multi-host (one process per host): ``--coordinator-address HOST:PORT --num-processes N
--process-id I`` (or the environment variables ``SAMX_COORDINATOR_ADDRESS``,
``SAMX_NUM_PROCESSES``, ``SAMX_PROCESS_ID``), or ``--distributed`` where JAX detects the
cluster itself (Cloud TPU, SLURM, Open MPI).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import threading

DEFAULT_COMPARE = "sgd,sam,saner,jsam,lsam"
# Stopped by SIGTERM after saving: EX_TEMPFAIL of sysexits.h, "try again later".
PREEMPTED = 75


def _add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--preset", default="quickstart",
                      help="a named configuration (samx presets lists them); default quickstart")
  parser.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="change one field, e.g. --set optimizer.rho=0.1 (repeatable)")
  parser.add_argument("--no-progress", action="store_true", help="one line per epoch, no bar")
  hosts = parser.add_argument_group(
      "several hosts", "one process per host, each started with the same command (see "
      "jax.distributed.initialize)")
  hosts.add_argument("--coordinator-address", metavar="HOST:PORT",
                     default=os.environ.get("SAMX_COORDINATOR_ADDRESS"),
                     help="where process 0 listens (default $SAMX_COORDINATOR_ADDRESS)")
  hosts.add_argument("--num-processes", type=int, metavar="N",
                     default=_int_env("SAMX_NUM_PROCESSES"),
                     help="how many processes in all (default $SAMX_NUM_PROCESSES)")
  hosts.add_argument("--process-id", type=int, metavar="I", default=_int_env("SAMX_PROCESS_ID"),
                     help="this process, from 0 (default $SAMX_PROCESS_ID)")
  hosts.add_argument("--distributed", action="store_true",
                     help="instead of the three above: let JAX detect the cluster (Cloud TPU, "
                     "SLURM, Open MPI)")


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  return None if value in (None, "") else int(value)


def build_parser() -> argparse.ArgumentParser:
  plain = (__doc__ or "").replace("``", "")  # the docstring without its reST markup
  parser = argparse.ArgumentParser(
      prog="samx", description=plain.split("\n\n")[0],
      epilog="\n\n".join(plain.split("\n\n")[1:]),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  train = commands.add_parser("train", help="train one configuration")
  _add_common(train)
  train.add_argument("--run-dir", help="where metrics, config and checkpoints go (default "
                     "runs/PRESET/OPTIMIZER-seedSEED)")
  train.add_argument("--resume", metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its latest checkpoint, with the "
                     "configuration stored there")
  train.add_argument("--resume-if-exists", action="store_true",
                     help="one command for the first start and every restart (after a "
                     "preemption): start the run directory if it is new, continue it if it "
                     "holds an unfinished run with the same configuration, report it if "
                     "finished; a run with another configuration is refused, naming the keys "
                     "(--overwrite replaces it)")
  train.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard scalars (needs samx[tensorboard])")
  train.add_argument("--overwrite", action="store_true",
                     help="replace a run already in the run directory (deletes it first; with "
                     "--resume-if-exists, only a run with another configuration)")
  compare = commands.add_parser("compare", help="train one configuration with several "
                                "optimizers; print a table and save a plot")
  _add_common(compare)
  compare.add_argument("--optimizers", default=DEFAULT_COMPARE,
                       help=f"comma-separated, each NAME or NAME+key=value (default "
                       f"{DEFAULT_COMPARE})")
  compare.add_argument("--out", help="output directory (default runs/compare-PRESET)")
  compare.add_argument("--overwrite", action="store_true",
                       help="replace runs in --out whose configuration differs (finished runs "
                       "with the same configuration are reused either way)")
  compare.add_argument("--retry-diverged", action="store_true",
                       help="train again, from the start, the entries that diverged in an "
                       "earlier run of this comparison (by default they are reported as "
                       "diverged)")
  commands.add_parser("presets", help="list the presets")
  commands.add_parser("methods", help="list the methods (optimizer.name) and their sections")
  return parser


def _initialize_distributed(args: argparse.Namespace) -> None:
  import jax

  if args.coordinator_address or args.num_processes or args.process_id is not None:
    missing = [flag for flag, value in (("--coordinator-address", args.coordinator_address),
                                        ("--num-processes", args.num_processes),
                                        ("--process-id", args.process_id)) if value is None]
    if missing:
      raise SystemExit(f"samx: multi-process runs need {', '.join(missing)} as well.")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


METHOD_COMBINATIONS = """
Every sharpness-aware method takes the optimizer section's shared options, on every model
(mlp, small_cnn, resnet18/34, preact_resnet18, wide_resnet, vit, ...), in float32 or bfloat16
(benchmarks/README.md, "The matrix"):
  optimizer.group_size=m    m-sharpness: each group of m examples its own eps (1: 1-SAM)
  optimizer.perturbed_statistics
                            what BatchNorm normalises with at w + eps: group (each group's own;
                            the whole batch's without group_size), batch (the clean pass's at w,
                            held fixed), running (the running averages); auto (the default):
                            batch with group_size, group without
  optimizer.adaptive=true   ASAM's ascent step; optimizer.perturb=normalization: SAM-ON's mask
sam_on needs normalization layers (BatchNorm, LayerNorm): refused on mlp and small_cnn.
sgd and penalty take one gradient per step: group_size changes nothing in them."""


class _Terminated(KeyboardInterrupt):
  """SIGTERM before a run could take it as a stop request (while importing, starting)."""

  signal_number = signal.SIGTERM


def _terminated(number: int, frame: object) -> None:
  raise _Terminated


def main(argv: list[str] | None = None, *, restore_signals: bool = True) -> int:
  """Runs the command line ``argv``; returns the exit status. SIGTERM is a stop request
  throughout (see the exit statuses), and with ``restore_signals=False`` (the ``samx``
  program) it is ignored once the command has ended, while the process shuts down."""
  args = build_parser().parse_args(argv)
  if args.command not in ("train", "compare") or (
      threading.current_thread() is not threading.main_thread()):
    return _main(args)
  previous = signal.signal(signal.SIGTERM, _terminated)  # a run installs its own meanwhile
  try:
    return _main(args)
  except _Terminated:  # between two runs of a comparison, or after the last one
    print("\nsamx: stopped (SIGTERM).", file=sys.stderr)
    return PREEMPTED
  finally:
    signal.signal(signal.SIGTERM, previous if restore_signals else signal.SIG_IGN)


def program() -> None:
  """The ``samx`` program (and ``python -m samx``)."""
  sys.exit(main(restore_signals=False))


def _main(args: argparse.Namespace) -> int:
  import jax

  from samx import train
  from samx.train import ConfigError
  from samx.train.errors import TrainingDivergedError, TrainingInterrupted, TrainingPreempted
  from samx.train.loop import method_label

  if args.command == "presets":
    for name, make in train.PRESETS.items():
      print(f"{name:<26} {' '.join((make.__doc__ or '').split())}")
    return 0
  if args.command == "methods":
    for name, entry in train.METHODS.items():
      section = f" (options: the {entry.section} section)" if entry.section else ""
      print(f"{name:<8} {entry.summary}{section}")
    print(f"{'penalty':<8} short for sgd with the penalty section at 1e-3 (Baek et al.'s cheap "
          "alternative); the penalty section works with every method")
    print(METHOD_COMBINATIONS)
    return 0
  _initialize_distributed(args)
  try:
    if args.command == "train":
      if args.resume:
        if (args.overwrite or args.overrides or args.preset != "quickstart"
                or args.resume_if_exists):
          raise ConfigError("--resume continues a run with its stored configuration; drop "
                            "--preset, --set, --overwrite and --resume-if-exists.")
        run_dir = pathlib.Path(args.resume)
        train.run(None, run_dir, resume=True, progress=not args.no_progress,
                  tensorboard=args.tensorboard)
      else:
        config = train.override(train.preset(args.preset), args.overrides)
        _warn_about_unused_sections(config, args.overrides)
        run_dir = pathlib.Path(args.run_dir or pathlib.Path("runs") / args.preset / (
            f"{method_label(config)}-seed{config.seed}"))
        train.run(config, run_dir, resume="auto" if args.resume_if_exists else False,
                  overwrite=args.overwrite, progress=not args.no_progress,
                  tensorboard=args.tensorboard)
      signal.signal(signal.SIGTERM, signal.SIG_IGN)  # done: a late SIGTERM changes nothing
      if jax.process_index() == 0:
        print(f"run directory: {run_dir}")
      return 0
    config = train.override(train.preset(args.preset), args.overrides)
    optimizers = [spec for spec in args.optimizers.split(",") if spec.strip()]
    out = args.out or pathlib.Path("runs") / f"compare-{args.preset}"
    train.compare(config, optimizers, out, overwrite=args.overwrite,
                  retry_diverged=args.retry_diverged, progress=not args.no_progress)
    return 0
  except (ConfigError, FileExistsError, FileNotFoundError, ImportError) as error:
    print(f"samx: error: {error}", file=sys.stderr)
    return 2
  except TrainingDivergedError as error:
    print(f"samx: {error}", file=sys.stderr)
    return 3
  except TrainingPreempted as error:
    print(f"\nsamx: {error}", file=sys.stderr)
    return PREEMPTED
  except TrainingInterrupted as error:
    print(f"\nsamx: {error}", file=sys.stderr)
    return 130
  except KeyboardInterrupt as interrupt:  # a signal where no run could save a step
    if getattr(interrupt, "signal_number", None) == signal.SIGTERM:
      print("\nsamx: stopped (SIGTERM) before training started; nothing was written.",
            file=sys.stderr)
      return PREEMPTED
    print("\nsamx: interrupted.", file=sys.stderr)
    return 130
  except OSError as error:  # a file that cannot be written or read: a full disk, permissions
    print(f"samx: error: {_describe_os_error(error)}", file=sys.stderr)
    return 1


def _warn_about_unused_sections(config, overrides: list[str]) -> None:
  """Says which ``--set`` values the run ignores: those of a method section that the chosen
  method does not read (``--set looksam.k=3`` with ``optimizer.name=sam``)."""
  from samx.train.config import unused_sections

  unused = set(unused_sections(config))
  for override in overrides:
    section = override.partition("=")[0].strip().split(".")[0]
    if section in unused:
      print(f"samx: warning: {override.strip()} is ignored: optimizer.name="
            f"{config.optimizer.name} does not use the {section} section.", file=sys.stderr)


def _describe_os_error(error: OSError) -> str:
  """``error`` in a sentence that names its file (samx's own errors already do)."""
  from samx.train.files import RunFileError

  if isinstance(error, RunFileError) or not error.filename:
    return str(error)
  return f"could not write {error.filename}: {error.strerror or error}."


if __name__ == "__main__":
  program()
