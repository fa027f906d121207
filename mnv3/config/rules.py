"""Rules across keys: what one field's checks cannot see (task-only keys,
fine-tuning keys without a source, sizes against the network's stride, ...)."""

from __future__ import annotations

from mnv3.config.schema import Config, ConfigError, fields_marked
from mnv3.errors import UserError
from mnv3.published import check_published


def _check_task(cfg: Config):
    for key, value, task, default in fields_marked(cfg, "only_for"):
        if task != cfg.task.name and value != default:
            raise ConfigError(f"{key}: not for task.name: {cfg.task.name}")
    if cfg.task.name == "classification":
        return
    task = cfg.task.name
    needs = "masks" if task == "segmentation" else "boxes"
    reads = ("`folder` (images/ and masks/)" if task == "segmentation" else
             "`folder` (a COCO or Pascal VOC folder)")
    if cfg.data.source not in ("synthetic", "folder"):
        raise ConfigError(f"data.source: {cfg.data.source} has no {needs}; {task} "
                          f"reads {reads} or `synthetic`")
    if cfg.model.remove_early_strides:
        raise ConfigError(f"model.remove_early_strides: not for {task}"
                          + (" (use task.output_stride)" if task == "segmentation" else ""))
    if not cfg.model.include_top:
        raise ConfigError(f"model.include_top: {task} always has its head")
    if task == "detection":
        _check_anchors(cfg.task)
        if cfg.export.int8_output != "float32":
            raise ConfigError(f"export.int8_output: {cfg.export.int8_output}: a detector's "
                              "file ends in TFLite's detection post-processing, whose "
                              "outputs are float32")
    elif cfg.data.ignore_index < cfg.data.num_classes:
        raise ConfigError(f"data.ignore_index: {cfg.data.ignore_index} is a class "
                          f"(data.num_classes is {cfg.data.num_classes}); use a value "
                          f">= {cfg.data.num_classes}")


def _check_anchors(task):
    scales = task.anchor_scales
    if len(scales) != 2 or not 0 < scales[0] < scales[1] <= 1:
        raise ConfigError(f"task.anchor_scales: expected [smallest, largest] with "
                          f"0 < smallest < largest <= 1, got {scales}")
    if not task.aspect_ratios or any(not 0.05 <= r <= 20 for r in task.aspect_ratios):
        raise ConfigError(f"task.aspect_ratios: expected one or more ratios, each "
                          f"0.05-20, got {task.aspect_ratios}")


def check_consistency(cfg: Config):
    _check_task(cfg)
    lo, hi = (cfg.data.scale_range + [0, 0])[:2]
    # Past 4x a 480 px frame is ~2000 px wide per view: memory, not augmentation.
    if len(cfg.data.scale_range) != 2 or not 0 < lo <= hi <= 4:
        raise ConfigError(f"data.scale_range: expected [low, high] with 0 < low <= high "
                          f"<= 4, got {cfg.data.scale_range}")
    for key in ("crop_scale", "crop_ratio", "box_crop_area"):
        lo_hi = getattr(cfg.data, key)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"data.{key}: expected [low, high] with 0 < low <= high, "
                              f"got {lo_hi}")
    if cfg.data.crop_scale[1] > 1:
        raise ConfigError(f"data.crop_scale: the high end is at most 1, got {cfg.data.crop_scale[1]}")
    if cfg.data.source in ("folder", "tfrecord") and not cfg.data.train_dir:
        raise ConfigError(f"data.train_dir: needed for data.source: {cfg.data.source}")
    if cfg.data.classes and cfg.data.source == "synthetic":
        raise ConfigError("data.classes: not for data.source: synthetic (its classes are fixed)")
    if cfg.data.classes == "imagenet" and cfg.data.num_classes != 1000:
        raise ConfigError(f"data.classes: imagenet has 1000 classes, but data.num_classes "
                          f"is {cfg.data.num_classes}")
    if cfg.data.source == "tfds" and not cfg.data.tfds_name:
        raise ConfigError("data.tfds_name: needed for data.source: tfds")
    if cfg.runtime.strategy == "multi_worker_mirrored" and cfg.runtime.seed is None:
        raise ConfigError("runtime.seed: workers must share a seed to split the data")
    if cfg.model.feature_outputs and cfg.model.include_top:
        raise ConfigError("model.feature_outputs: needs model.include_top: false")
    fine_tuning = {"train.freeze_backbone_epochs": cfg.train.freeze_backbone_epochs != 0,
                   "train.backbone_lr_scale": cfg.train.backbone_lr_scale != 1.0,
                   "train.freeze_batch_norm": cfg.train.freeze_batch_norm,
                   "train.epochs": cfg.train.epochs == 0}
    for key, used in fine_tuning.items():
        if used and not cfg.model.init_from:
            raise ConfigError(f"{key}: {getattr(cfg.train, key.split('.')[1])} needs "
                              "model.init_from (there is no pretrained backbone)")
    if cfg.train.qat_epochs > cfg.train.epochs:
        raise ConfigError(f"train.qat_epochs: {cfg.train.qat_epochs} is more than "
                          f"train.epochs ({cfg.train.epochs})")
    if cfg.train.freeze_backbone_epochs > cfg.train.epochs:
        raise ConfigError(f"train.freeze_backbone_epochs: {cfg.train.freeze_backbone_epochs} "
                          f"is more than train.epochs ({cfg.train.epochs})")
    if cfg.train.freeze_backbone_epochs and not cfg.model.include_top:
        raise ConfigError("train.freeze_backbone_epochs: needs model.include_top (the "
                          "head is what trains while the backbone is frozen)")
    if cfg.model.init_from == "imagenet":
        try:
            check_published(cfg.model)
        except UserError as e:
            raise ConfigError(str(e)) from None
    total_stride = 2 ** (5 - cfg.model.remove_early_strides)
    if cfg.task.name == "segmentation":
        total_stride = cfg.task.output_stride
    if cfg.data.image_size < total_stride:
        raise ConfigError(
            f"data.image_size: {cfg.data.image_size} px is smaller than the network's "
            f"total stride {total_stride}")
    sizes = cfg.data.train_image_sizes or []
    if any(not total_stride <= s <= 1024 for s in sizes):
        raise ConfigError(f"data.train_image_sizes: each size is {total_stride}-1024 px "
                          f"(the network's total stride up to 1024), got {sizes}")
    if len(sizes) > max(cfg.train.epochs, 1):
        raise ConfigError(f"data.train_image_sizes: {len(sizes)} stages for "
                          f"{cfg.train.epochs} epochs; give at most one size per epoch")
