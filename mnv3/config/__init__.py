"""Typed, validated experiment configs.

A config is a YAML file with the sections below; every key has a default, so a
file only says what differs. Loading is strict: unknown keys, wrong types, bad
enum values and out-of-range numbers raise ConfigError with one line naming the
file and the dotted key. `--set KEY=VALUE` overrides go through the same checks.

The schema is data (schema.py): each field carries its help text, limits and
marks in `metadata`, which also renders docs/config.md (`python -m
mnv3.config`, reference.py). values.py checks one value, rules.py checks keys
against each other, loading.py reads YAML and overrides.
"""

from mnv3.config.loading import from_dict, load, parse_override, save, to_dict
from mnv3.config.reference import reference_markdown
from mnv3.config.schema import (Config, ConfigError, DataConfig, ExportConfig, ModelConfig,
                                RuntimeConfig, TaskConfig, TrainConfig, checkpoint_identity)

__all__ = ["Config", "ConfigError", "DataConfig", "ExportConfig", "ModelConfig",
           "RuntimeConfig", "TaskConfig", "TrainConfig", "checkpoint_identity",
           "from_dict", "load", "parse_override", "reference_markdown", "save", "to_dict"]
