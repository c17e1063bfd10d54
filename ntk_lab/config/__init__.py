"""A run's settings: the typed schema, its validation, and the studies' settings.

Only the command lines hand composed Hydra settings (as plain dicts) to :func:`validate`;
everything below them takes a :class:`RunConfig` or plain arguments. Imports the name lists
of every lower package (layers, models, kernels, data, training, records, loggers).
"""

from ntk_lab.config.schema import (
    PRECISIONS, ConfigError, DataConfig, LazyConfig, LoggerConfig, ModelConfig, NTKConfig,
    RunConfig, TrainConfig, m_arch,
)
from ntk_lab.config.studies import (
    COORD_CHECK_PRESET, FLUCTUATIONS_PRESET, STUDY_BLOCKS, coord_check_settings,
    fluctuation_settings, study_of,
)
from ntk_lab.config.validation import data_settings, logger_config, validate

__all__ = [
    "PRECISIONS", "ConfigError", "DataConfig", "LazyConfig", "LoggerConfig", "ModelConfig",
    "NTKConfig", "RunConfig", "TrainConfig", "m_arch", "COORD_CHECK_PRESET",
    "FLUCTUATIONS_PRESET", "STUDY_BLOCKS", "coord_check_settings", "fluctuation_settings",
    "study_of", "data_settings", "logger_config", "validate",
]
