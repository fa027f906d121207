"""What the network is trained to do, one unit per task, each in two halves:
the training half (model, data views and labels, loss, metrics, best metric,
head layers; `Task`) and the export half (output range, float ops, metadata,
scorecard, pictures, report sections; `TaskExport`).

The engines (mnv3.training, mnv3.export) and the cli call `get(cfg)` once and
pass the task down; parts (model, data, metrics, results, tflite) never import
a task, and nothing here imports an engine.

Adding a task (as detection was added):
1. `mnv3/tasks/<task>.py`: `class <Task>(Task)`, the training half;
2. `mnv3/tasks/<task>_export.py`: `class <Task>Export(TaskExport)`;
3. one line in TASKS below (and the name among `task.name`'s choices in
   mnv3.config, with its task-only keys marked there).
The engines need no change: if one needs `if task.name == ...`, the seam is in
the wrong place.
"""

from __future__ import annotations

from mnv3.tasks.base import Task, TaskExport
from mnv3.tasks.classification import Classification
from mnv3.tasks.classification_export import ClassificationExport
from mnv3.tasks.detection import Detection
from mnv3.tasks.detection_export import DetectionExport
from mnv3.tasks.segmentation import Segmentation
from mnv3.tasks.segmentation_export import SegmentationExport

# task.name -> (training half, export half)
TASKS = {"classification": (Classification, ClassificationExport),
         "segmentation": (Segmentation, SegmentationExport),
         "detection": (Detection, DetectionExport)}


def get(cfg) -> Task:
    """The task `cfg.task.name` selects, for this config, with its export half
    joined as `task.export`."""
    training, export = TASKS[cfg.task.name]
    task = training(cfg)
    task.export = export(task)
    return task


__all__ = ["TASKS", "Task", "TaskExport", "get"]
