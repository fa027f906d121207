"""One value checked against its field: type (with "did you mean" for enums),
range, and unknown or renamed keys. Errors are one ConfigError line naming the
dotted key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from typing import Literal

from mnv3.config.schema import Config, ConfigError

_YAML11_FLOAT_MISSED = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else type_name(a)
                           for a in typing.get_args(tp))
    if origin is list:
        return "a list of " + type_name(typing.get_args(tp)[0])
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, str(tp))


def coerce(value, tp, where: str):
    """Returns `value` as type `tp`, or raises ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: {value!r} is not {type_name(tp)}{extra}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)):  # `--set export.quant=int8`
            value = [value]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected a non-empty list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    # YAML's bool is a subclass of int; keep them apart so `alpha: true` fails.
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and not isinstance(value, bool) and (
            isinstance(value, (int, float)) or
            # PyYAML (YAML 1.1) reads `1e-3` as a string; everyone means the number.
            isinstance(value, str) and _YAML11_FLOAT_MISSED.fullmatch(value.strip())):
        number = float(value)
        # NaN passes every `<` and `>` range check, so it is refused here, by name.
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")


def check_range(value, meta, where: str):
    if isinstance(value, list):
        for i, v in enumerate(value):
            check_range(v, meta, f"{where}[{i}]")
        return
    if value is None or isinstance(value, (str, bool)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value <= lo if meta.get("min_exclusive") else value < lo):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"{where}: must be {op} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: must be <= {hi}, got {value}")


def unknown_key(key: str, known, where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, list(known), n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(known)}"
    name = f"{where}.{key}" if where else key
    return ConfigError(f"{name}: unknown key{extra}")


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def section_types(cls) -> dict:
    return typing.get_type_hints(cls)


# Keys that were renamed: configs saved by older runs still load.
RENAMED = {("export", "calibration_images"): "calibration_steps"}


def current_key(section: str, key):
    return RENAMED.get((section, key), key)


def apply(section_obj, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = section_types(type(section_obj))
    fields = {f.name: f for f in dataclasses.fields(section_obj)}
    current = [current_key(where, key) for key in values]
    twice = sorted({str(k) for k in current if current.count(k) > 1})
    if twice:
        raise ConfigError(f"{where}.{twice[0]}: given twice (once under its old name)")
    for key, value in zip(current, values.values()):
        if key not in fields:
            raise unknown_key(str(key), fields, where)
        dotted = f"{where}.{key}"
        value = coerce(value, hints[key], dotted)
        check_range(value, fields[key].metadata, dotted)
        setattr(section_obj, key, value)
