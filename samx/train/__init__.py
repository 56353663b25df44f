"""The training engine: configs, presets, the jit-compiled data-parallel loop, comparisons.

Example:
  >>> from samx import train
  >>> config = train.override(train.preset("quickstart"), ["epochs=1", "optimizer.name=sam"])
  >>> result = train.run(config, log=None)  # doctest: +SKIP
"""

from samx.train.compare import compare, format_table, plot_comparison
from samx.train.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    OptimizerConfig,
    ScheduleConfig,
    from_dict,
    override,
    to_dict,
    validate,
)
from samx.train.data import TrainingData, load_data
from samx.train.engine import (
    RunResult,
    Trainer,
    TrainState,
    load_run_config,
    make_trainer,
    run,
)
from samx.train.presets import PRESETS, preset

__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimizerConfig",
    "RunResult",
    "ScheduleConfig",
    "TrainState",
    "Trainer",
    "TrainingData",
    "compare",
    "format_table",
    "from_dict",
    "load_data",
    "load_run_config",
    "make_trainer",
    "override",
    "plot_comparison",
    "preset",
    "run",
    "to_dict",
    "validate",
]
