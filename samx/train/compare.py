"""Several optimizers on one configuration: a side-by-side table and the papers' picture (test
accuracy and noisy-label memorization against epochs)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from samx.train import run_lock
from samx.train.config import LEGACY_KEYS, Config, OptimizerConfig, override, validate
from samx.train.errors import (
    ConfigError,
    RunDirectoryError,
    TrainingDivergedError,
    TrainingInterrupted,
)
from samx.train.files import RunFileError, read_json, remove_temporaries, write_atomic
from samx.train.loop import RunResult, finished_run, run
from samx.train.methods import METHODS
from samx.train.run_dir import decide, describe_differences, is_writer, strict_json

TABLE_COLUMNS = (
    ("optimizer", "{}"), ("best test acc", "{:.3f}"), ("at epoch", "{}"),
    ("final test acc", "{:.3f}"), ("noisy memorized", "{:.3f}"),
    ("noisy true label", "{:.3f}"), ("clean train acc", "{:.3f}"), ("img/s", "{:.0f}"),
    ("seconds", "{:.1f}"),
)


def _section_of(name: str) -> str | None:
  """The config section of ``name``'s own options (``penalty`` for the shorthand)."""
  if name == "penalty":
    return "penalty"
  return METHODS[name].section if name in METHODS else None


def parse_optimizer_spec(spec: str) -> tuple[str, list[str]]:
  """``"sam+rho=0.1+group_size=1"`` -> ``("sam+rho=0.1+group_size=1", ["optimizer.name=sam",
  "optimizer.rho=0.1", "optimizer.group_size=1"])``: a label and its overrides.

  A bare key is one of the method's own section if it has it (``saner+alpha=0.25`` sets
  ``saner.alpha``, ``penalty+feature_coef=0.01`` sets ``penalty.feature_coef``), else of the
  ``optimizer`` section; a dotted key is taken as it is.
  """
  name, *settings = [part.strip() for part in spec.split("+")]
  if not name:
    raise ConfigError(f"--optimizers entries look like NAME or NAME+key=value; got {spec!r}.")
  section = _section_of(name)
  own = [] if section is None else [f.name for f in dataclasses.fields(
      type(getattr(Config(), section)))]
  shared = [f.name for f in dataclasses.fields(OptimizerConfig) if f.name != "name"]
  assignments = [f"optimizer.name={name}"]
  for setting in settings:
    key, sep, _ = setting.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"--optimizers entries look like NAME or NAME+key=value (e.g. "
                        f"sam+rho=0.1+group_size=1); got {spec!r}.")
    if "." in key:
      assignments.append(setting)
    elif key in own:
      assignments.append(f"{section}.{setting}")
    elif key in shared or f"optimizer.{key}" in LEGACY_KEYS:
      assignments.append(f"optimizer.{setting}")
    else:
      accepted = (f"{name}'s own options (the {section} section): {', '.join(own)}; "
                  if own else "")
      raise ConfigError(f"unknown option {key!r} in --optimizers entry {spec.strip()!r}; "
                        f"{accepted}the options every method shares (the optimizer section): "
                        f"{', '.join(shared)}.")
  return spec.strip(), assignments


def _row(label: str, summary: dict[str, Any]) -> list[str]:
  """One row of the table; a diverged run's label says at which step, and its final columns
  (those of a diverged network) are left blank."""
  diverged = summary.get("status") == "diverged"
  if diverged:
    label = f"{label} (diverged at step {summary.get('diverged_at_step')})"
  values = [label, summary.get("best_test_accuracy"), summary.get("best_epoch"),
            summary.get("final_test_accuracy"), summary.get("final_noisy_memorization"),
            summary.get("final_noisy_true_label_accuracy"),
            summary.get("final_train_clean_accuracy"), summary.get("images_per_second"),
            summary.get("train_seconds")]
  if diverged:  # the final values are those of a diverged network: not shown
    values[3:7] = [None] * 4
  return ["-" if v is None else fmt.format(v) for v, (_, fmt) in zip(values, TABLE_COLUMNS,
                                                                      strict=True)]


def format_table(summaries: dict[str, dict[str, Any]], *, markdown: bool = False) -> str:
  """The comparison table: one row per optimizer."""
  header = [name for name, _ in TABLE_COLUMNS]
  rows = [_row(label, summary) for label, summary in summaries.items()]
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  line = lambda cells: "  ".join(  # noqa: E731
      c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                          strict=True)))
  return "\n".join([line(header)] + [line(r) for r in rows])


def plot_comparison(histories: dict[str, list[dict[str, Any]]], path: str | pathlib.Path,
                    *, title: str = "") -> pathlib.Path:
  """Saves test accuracy and noisy-label memorization against epochs, one line per optimizer.

  Needs matplotlib; returns the path of the image.
  """
  from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
  from matplotlib.ticker import MaxNLocator

  panels = (("test_accuracy", "test accuracy"),
            ("noisy_memorization", "noisy labels memorized (train)"))
  figure = Figure(figsize=(10, 3.8), constrained_layout=True)
  axes = figure.subplots(1, 2)
  for axis, (key, label) in zip(axes, panels, strict=True):
    for name, history in histories.items():
      points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
      if points:
        epochs, values = zip(*points, strict=True)
        axis.plot(epochs, values, marker="o" if len(points) < 30 else None, markersize=3,
                  label=name)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if title:
    figure.suptitle(title, fontsize=10)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = io.BytesIO()
  figure.savefig(image, dpi=120, format=path.suffix.lstrip(".") or "png")
  write_atomic(path, image.getvalue())
  return path


def _plan(configs: dict[str, Config], out_dir: pathlib.Path, overwrite: bool,
          retry_diverged: bool) -> dict[str, str]:
  """What to do with each entry's run directory (``samx.train.run_dir.decide``, the rule
  of ``samx train --resume-if-exists``). Raises :class:`RunDirectoryError`, before anything
  trains, naming every directory that holds a run with another configuration."""
  plan, conflicts = {}, []
  for label, config in configs.items():
    run_dir = out_dir / run_dir_name(label)
    decision = decide(run_dir, config, overwrite=overwrite, retry_diverged=retry_diverged)
    if decision.action == "refuse":
      conflicts.append(describe_differences(run_dir, decision.differences))
    plan[label] = decision.action
  if conflicts:
    raise RunDirectoryError(
        f"these run directories hold runs with another configuration: {', '.join(conflicts)}. "
        f"Nothing was trained. Write to another directory (--out), or replace them with "
        f"--overwrite.")
  return plan


def _say_what_the_table_replaces(out_dir: pathlib.Path, labels: list[str],
                                 say: Callable[[str], None]) -> None:
  """Says so when the table and plot of ``out_dir`` held other entries before."""
  path = out_dir / "compare.json"
  if not path.exists():
    return
  try:
    before = list(read_json(path, what="the previous table", advice="it is replaced"))
  except (RunFileError, TypeError):
    return
  if before != labels:
    gone = [label for label in before if label not in labels]
    say(f"{out_dir}: the table and plot listed {', '.join(before)}; they now list "
        f"{', '.join(labels)}" + (f" (the runs of {', '.join(gone)} stay in their directories; "
                                  f"list them in --optimizers to see them again, or use --out "
                                  f"for a separate comparison)" if gone else "") + ".")


def run_dir_name(label: str) -> str:
  """The run directory of a ``--optimizers`` entry under the comparison's directory."""
  return label.replace("=", "-")


def compare(
    config: Config,
    optimizers: Sequence[str],
    out_dir: str | pathlib.Path | None = None,
    *,
    overwrite: bool = False,
    retry_diverged: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, RunResult]:
  """Runs ``config`` once per entry of ``optimizers`` and writes the table and the plot.

  Each entry is an optimizer name (``sgd``, ``sam``, ``saner``, ``jsam``, ...) optionally
  followed by ``+key=value`` settings (see ``parse_optimizer_spec``; ``sam+group_size=1``
  is 1-SAM). Every run uses the same data, noise, initialisation and batch order. ``out_dir``
  (if given) receives one run directory per entry, ``compare.md``/``compare.json`` (the
  table) and ``compare.png`` (the plot).

  Running the same comparison again reuses each finished run whose stored configuration is
  the one asked for, continues unfinished ones from their checkpoints (or trains them again
  when they have none), trains what is missing, and rewrites the table and the plot. Every
  entry and every run directory is checked before anything trains: a directory that holds a
  run with another configuration stops the comparison, unless ``overwrite=True``, which
  replaces those runs. The process holds the lock of ``out_dir`` and of every run directory
  in it until it ends, so a second comparison or a ``samx train`` into them is refused.

  An entry that diverges does not stop the others: its row in the table is marked with the
  step where it diverged, and once every entry has run (and the table and plot are written)
  :class:`TrainingDivergedError` names the diverged entries. Running the comparison again
  reports a diverged entry as it is, unless ``retry_diverged=True``, which trains it again
  from the start.
  """
  specs = [parse_optimizer_spec(spec) for spec in optimizers]
  if not specs:
    raise ConfigError("--optimizers must name at least one optimizer.")
  labels = [label for label, _ in specs]
  if len(set(labels)) != len(labels):
    raise ConfigError(f"--optimizers lists an entry twice: {', '.join(labels)}.")
  configs = {label: override(config, assignments) for label, assignments in specs}
  for checked in configs.values():  # every entry is checked before any training starts
    validate(checked)
  say = log if log is not None else (lambda _: None)
  if out_dir is None:
    return _compare(config, configs, None, {label: "train" for label in configs}, progress, log)
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise RunDirectoryError(f"--out {out_dir} is a file; a comparison writes a directory: "
                            f"choose another path.")
  writer = is_writer()
  with contextlib.ExitStack() as locks:
    locks.enter_context(run_lock.locked(out_dir, enabled=writer))
    for label in configs:
      locks.enter_context(run_lock.locked(out_dir / run_dir_name(label), enabled=writer))
    plan = _plan(configs, out_dir, overwrite, retry_diverged)
    for done in remove_temporaries(out_dir) if writer else []:
      say(f"{out_dir}: removed {done.name}, left by a write that did not finish")
    return _compare(config, configs, out_dir, plan, progress, log)


def _compare(config: Config, configs: dict[str, Config], out_dir: pathlib.Path | None,
             plan: dict[str, str], progress: bool, log: Callable[[str], None] | None
             ) -> dict[str, RunResult]:
  say = log if log is not None else (lambda _: None)
  results, diverged = {}, {}
  for label, run_config in configs.items():
    run_dir = None if out_dir is None else out_dir / run_dir_name(label)
    action = plan[label]
    say(f"\n== {label} =={'' if action == 'train' else ' (' + action + ')'}")
    if action in ("reuse", "diverged"):
      if run_dir is None:  # only _plan, which needs out_dir, decides these
        raise ValueError(f"{label}: action {action!r} needs a run directory (out_dir).")
      results[label] = finished_run(run_dir)
      if action == "diverged":
        diverged[label] = results[label].summary.get("diverged_at_step")
        say(f"{run_dir} diverged at step {diverged[label]} before; not trained again "
            f"(--retry-diverged does)")
      continue
    try:
      results[label] = run(run_config, run_dir, resume=action == "resume",
                           overwrite=action in ("retrain", "overwrite"), progress=progress,
                           log=log)
    except TrainingInterrupted as stopped:
      if out_dir is None:
        raise
      detail = f"{label}: {stopped.detail}"
      raise type(stopped)(f"{detail} To continue the comparison, run the same samx compare "
                          f"command again: finished entries are reused and this one continues "
                          f"from its checkpoint.", step=stopped.step, detail=detail) from None
    except TrainingDivergedError as error:
      say(f"samx: {error}")
      diverged[label] = error.step
      results[label] = (finished_run(run_dir) if run_dir is not None else
                        RunResult([], {"status": "diverged", "diverged_at_step": error.step},
                                  None, run_config, None))
  summaries = {label: result.summary for label, result in results.items()}
  say("\n" + format_table(summaries))
  if out_dir is not None:
    _say_what_the_table_replaces(out_dir, list(summaries), say)
    write_atomic(out_dir / "compare.md", format_table(summaries, markdown=True) + "\n")
    write_atomic(out_dir / "compare.json", strict_json(summaries, indent=2) + "\n")
    first = next(iter(results.values()))
    title = (f"{first.summary.get('dataset', '')}, {first.summary.get('noise_rate') or 0:.0%} "
             f"noisy labels, {config.model.name}")
    path = plot_comparison({label: r.history for label, r in results.items()},
                           out_dir / "compare.png", title=title)
    say(f"\ntable: {out_dir / 'compare.md'}   plot: {path}")
  if diverged:
    names = ", ".join(f"{label} (at step {step})" for label, step in diverged.items())
    raise TrainingDivergedError(f"{len(diverged)} of {len(configs)} entries diverged: {names}; "
                                f"the table marks them.")
  return results
