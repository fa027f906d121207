"""Loading a config from YAML and `--set` overrides, and saving the resolved one."""

from __future__ import annotations

import dataclasses
import os
import typing

import yaml

from mnv3.config.rules import check_consistency
from mnv3.config.schema import Config, ConfigError
from mnv3.config.values import apply, section_names, unknown_key
from mnv3.files import write_atomically


def _apply_sections(cfg: Config, raw: dict, source: str) -> None:
    """Sets every key of `raw` on `cfg`, checking each; errors name `source`."""
    for name, values in raw.items():
        if name not in section_names():
            raise ConfigError(f"{source}: {unknown_key(str(name), section_names(), '')}")
        try:
            apply(getattr(cfg, name), values or {}, name)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def from_dict(raw: dict | None, source: str = "config") -> Config:
    """Builds a Config from nested plain data, checking every key."""
    cfg = Config()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    _apply_sections(cfg, raw, source)
    return _consistent(cfg, source)


def _consistent(cfg: Config, source: str) -> Config:
    """`cfg` once the rules across keys hold; an error names `source`."""
    try:
        check_consistency(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def parse_override(text: str) -> tuple[list[str], object]:
    """'model.alpha=0.5' -> (['model', 'alpha'], 0.5), typed as YAML types it."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. model.alpha=0.75")
    key, raw_value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"--set {text}: KEY must be section.key, e.g. train.epochs")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {raw_value!r} is not valid YAML") from None
    return path, value


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except OSError as e:  # a path through a file, no permission, an I/O error
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load(paths: str | typing.Sequence[str] | None,
         overrides: typing.Sequence[str] = ()) -> Config:
    """Reads YAML configs (the defaults when there are none) and applies
    overrides. Later files override earlier ones key by key (a base config,
    then a phase's changes to it); each file's keys are checked as they are
    set, so an error names the file it is in, and the rules across keys are
    checked once everything is set."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    cfg = Config()
    for path in paths:
        _apply_sections(cfg, _read(path), path)
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in section_names():
            raise ConfigError(f"--set {unknown_key(section, section_names(), '')}")
        try:  # the message points at --set
            apply(getattr(cfg, section), {key: value}, section)
        except ConfigError as e:
            raise ConfigError(f"--set {e}") from None
    return _consistent(cfg, " + ".join(paths) or "defaults")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: str) -> None:
    """Writes the fully resolved config atomically, so a run can be repeated exactly."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
