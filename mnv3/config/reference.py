"""The config reference (docs/config.md), rendered from the schema."""

from __future__ import annotations

import dataclasses

import yaml

from mnv3.config.schema import Config, field_default
from mnv3.config.values import section_types, type_name


def reference_markdown() -> str:
    """The config reference table of docs/config.md, generated from the schema."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints = section_types(cls)
        for f in dataclasses.fields(cls):
            default = field_default(f)
            rows.append(
                f"| `{section.name}.{f.name}` | {type_name(hints[f.name])} | "
                f"`{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}` | "
                f"{f.metadata['help']} |")
    return "\n".join(rows)
