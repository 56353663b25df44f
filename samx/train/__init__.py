"""The training engine: configs, presets, the jit-compiled data-parallel (or FSDP) loop,
comparisons.

One module per concern, each importing only those above it in this list:

- ``errors``: :class:`ConfigError` and the errors a run ends with; ``stopping`` (SIGTERM and
  Ctrl-C as stop requests), ``agreement`` (one decision on every process).
- ``methods``: the registry of optimizer names (how each builds its samx transform, its own
  config section, what it needs from the step).
- ``config``: the typed :class:`Config`, ``key=value`` overrides, JSON, :func:`validate`.
- ``training_data``, ``architectures``, ``optimizer``: the run's arrays, model and optax
  chain, built from the config.
- ``in_flight``: :class:`InFlight`, how far the host runs ahead of the devices.
- ``step``: the pure training step; ``evaluation``: the clean/noisy metrics.
- ``sharding``: the mesh and where each array of the state lives (FSDP's rule).
- ``trainer``: the compiled functions; ``files`` (atomic writes), ``run_lock``
  (one writer per directory), ``run_dir``, ``progress``, ``checkpoints`` (with checksums):
  what a run writes and shows; ``loop``: :func:`run`; ``compare``, ``presets``.
- ``host_devices``: :func:`virtual_cpu_devices_flags`, for many-device runs on one CPU.

Example:
  >>> from samx import train
  >>> config = train.override(train.preset("quickstart"), ["epochs=1", "optimizer.name=sam"])
  >>> result = train.run(config, log=None)  # doctest: +SKIP
"""

from samx.train.compare import compare, format_table, plot_comparison
from samx.train.config import (
    Config,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    OptimizerConfig,
    PenaltyConfig,
    ScheduleConfig,
    ShardingConfig,
    from_dict,
    override,
    to_dict,
    validate,
)
from samx.train.errors import (
    ConfigError,
    RunDirectoryError,
    TrainingDivergedError,
    TrainingInterrupted,
    TrainingPreempted,
)
from samx.train.host_devices import virtual_cpu_devices_flags
from samx.train.in_flight import InFlight
from samx.train.loop import RunResult, run
from samx.train.methods import (
    METHODS,
    AESAMConfig,
    GSAMConfig,
    LookSAMConfig,
    Method,
    SANERConfig,
)
from samx.train.presets import PRESETS, preset
from samx.train.run_dir import RunStatus, inspect_run, load_run_config, read_history
from samx.train.step import TrainState
from samx.train.trainer import Trainer, make_trainer
from samx.train.training_data import TrainingData, load_data

__all__ = [
    "METHODS",
    "PRESETS",
    "AESAMConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "GSAMConfig",
    "InFlight",
    "LookSAMConfig",
    "Method",
    "ModelConfig",
    "NoiseConfig",
    "OptimizerConfig",
    "PenaltyConfig",
    "RunDirectoryError",
    "RunResult",
    "RunStatus",
    "SANERConfig",
    "ScheduleConfig",
    "ShardingConfig",
    "TrainState",
    "Trainer",
    "TrainingData",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "TrainingPreempted",
    "compare",
    "format_table",
    "from_dict",
    "inspect_run",
    "load_data",
    "load_run_config",
    "make_trainer",
    "override",
    "plot_comparison",
    "preset",
    "read_history",
    "run",
    "to_dict",
    "validate",
    "virtual_cpu_devices_flags",
]
