"""What the network is trained to do, as one unit per task: its model head, the
data it reads (labels or masks), its loss and metrics, the metric that picks
the best checkpoint, and how its exported files are scored and described.

Data, trainer and export code ask the task; none of them branches on its name.
A third task (detection) is a third module here.
"""

from __future__ import annotations

from mnv3.tasks.base import Task


def get(cfg) -> Task:
    """The task `cfg.task.name` selects."""
    if cfg.task.name == "segmentation":
        from mnv3.tasks.segmentation import Segmentation
        return Segmentation(cfg)
    from mnv3.tasks.classification import Classification
    return Classification(cfg)


__all__ = ["Task", "get"]
