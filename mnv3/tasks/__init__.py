"""What the network is trained to do, as one unit per task: its model head, the
data it reads (labels or masks), its loss and metrics, the metric that picks
the best checkpoint, and how its exported files are scored and described.

Data, trainer and export code ask the task; none of them branches on its name.
A third task (detection) is a third module here.
"""

from __future__ import annotations

from mnv3.tasks.base import Task


import importlib

# task.name -> the module and class that implement it (imported on first use).
TASKS = {"classification": ("mnv3.tasks.classification", "Classification"),
         "segmentation": ("mnv3.tasks.segmentation", "Segmentation")}


def get(cfg) -> Task:
    """The task `cfg.task.name` selects, for this config."""
    module, name = TASKS[cfg.task.name]
    return getattr(importlib.import_module(module), name)(cfg)


__all__ = ["TASKS", "Task", "get"]
