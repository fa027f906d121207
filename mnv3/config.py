"""Typed, validated experiment configs.

A config is a YAML file with the sections below; every key has a default, so a
file only says what differs. Loading is strict: unknown keys, wrong types, bad
enum values and out-of-range numbers raise ConfigError with one line naming the
file and the dotted key. `--set KEY=VALUE` overrides go through the same checks.

The schema is data: each field carries its help text and limits in `metadata`,
which also renders docs/config.md (`python -m mnv3.config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional

import yaml

from mnv3.errors import UserError
from mnv3.files import write_atomically
from mnv3.published import check_published


_YAML11_FLOAT_MISSED = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(UserError):
    """A config file or override that cannot be used as given."""


def _field(default, help: str, *, min=None, max=None, min_exclusive=False,
           only_for: str | None = None, checkpoint: bool | str = False):
    """A config key: its default, help text and limits, and two marks.
    `only_for`: the one task.name it means something for; set away from its
    default under another task, it is refused. `checkpoint`: a run's checkpoints
    depend on it, so a run directory refuses a config that changes it (`"is
    set"`: only whether it is null or not)."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive,
            "only_for": only_for, "checkpoint": checkpoint}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TaskConfig:
    name: Literal["classification", "segmentation"] = _field(
        "classification", "What the network predicts: a class per image, or a class "
        "per pixel (the paper's LR-ASPP head; data needs masks).", checkpoint=True)
    output_stride: Literal[8, 16, 32] = _field(
        16, "`segmentation`: the backbone's total stride; the stages past it run "
        "dilated for denser features (paper: 16; 8 costs more, 32 is undilated).",
        checkpoint=True)
    reduced_tail: bool = _field(
        True, "`segmentation`: halve the channels of the last stage, as the paper's "
        "segmentation models do (cheaper, no loss of accuracy there). These layers "
        "then start afresh under model.init_from.", checkpoint=True)
    head_channels: int = _field(
        128, "`segmentation`: width of the LR-ASPP head's 1x1 branch (paper: 128).",
        min=8, max=4096, checkpoint=True)


@dataclass
class ModelConfig:
    variant: Literal["large", "small"] = _field(
        "small", "MobileNetV3 size: `large` or `small` (paper tables 1 and 2).",
        checkpoint=True)
    alpha: float = _field(
        1.0, "Width multiplier; channels are rounded to multiples of 8.",
        min=0.0, max=4.0, min_exclusive=True, checkpoint=True)
    minimalistic: bool = _field(
        False, "3x3 kernels, ReLU everywhere, no squeeze-excite (faster on some hardware).",
        checkpoint=True)
    se_ratio: float = _field(
        0.25, "Squeeze-excite bottleneck ratio.", min=0.0, max=1.0, min_exclusive=True,
        checkpoint=True)
    dropout: float = _field(0.2, "Dropout before the classifier.", min=0.0, max=0.9,
        checkpoint=True)
    bn_momentum: float = _field(
        0.99, "BatchNorm moving-average momentum (paper: 0.99; 0.999 needs long runs).",
        min=0.0, max=1.0, min_exclusive=True, checkpoint=True)
    bn_epsilon: float = _field(
        1e-3, "BatchNorm epsilon.", min=0.0, max=1.0, min_exclusive=True, checkpoint=True)
    init_from: Optional[str] = _field(
        None, "Starting weights: `imagenet` (keras.applications' published file for "
        "this variant, alpha and minimalistic setting), a weights file (`.h5`, "
        "`.weights.h5`, `.keras`) or an earlier run directory. The classifier is "
        "re-initialised when the class count differs. A resumed run keeps its own "
        "checkpoint. null: random initialisation.")
    remove_early_strides: int = _field(
        0, "Leading stride-2 layers run at stride 1, for small images "
        "(2 for 32 px CIFAR: a 4x4 final map instead of 1x1).", min=0, max=2, checkpoint=True)
    include_top: bool = _field(
        True, "Classifier head on top; false gives a backbone.", checkpoint=True)
    pooling: Literal["avg", "max", "none"] = _field(
        "avg", "Global pooling of the backbone output when `include_top` is false.",
        checkpoint=True)
    feature_outputs: bool = _field(
        False, "Backbone returns feature maps at strides 8, 16 and 32 "
        "(for detection / segmentation heads); needs `include_top: false`.",
        only_for="classification", checkpoint=True)
    classifier_activation: Literal["softmax", "linear"] = _field(
        "softmax", "Activation of the classifier output.", checkpoint=True)


@dataclass
class DataConfig:
    source: Literal["synthetic", "folder", "tfds", "tfrecord"] = _field(
        "synthetic", "Where images come from: built-in `synthetic` shapes, a class-per-"
        "folder directory, a TFDS dataset, or ImageNet-layout TFRecord shards.")
    train_dir: Optional[str] = _field(
        None, "`folder`: directory with one sub-folder per class (segmentation: "
        "`images/` and `masks/`, an image and its PNG mask sharing a file stem); "
        "`tfrecord`: directory of training shards.")
    eval_dir: Optional[str] = _field(
        None, "Evaluation data in the same form; when unset, `val_fraction` of train "
        "is held out.")
    image_size: int = _field(224, "Square input resolution in pixels (the height "
                             "when `image_width` is set).", min=32, max=1024, checkpoint=True)
    train_image_sizes: Optional[list[int]] = _field(
        None, "Classification: training resolutions in equal stages of the epochs, "
        "e.g. [96, 112, 128] (progressive resizing: early epochs are cheaper); "
        "evaluation and export stay at `image_size`. null: `image_size` throughout.",
        only_for="classification")
    image_width: Optional[int] = _field(
        None, "`segmentation`: input width, for frames that are not square (CamVid: "
        "image_size 360, image_width 480); null: square.", min=32, max=2048,
        only_for="segmentation", checkpoint=True)
    ignore_index: int = _field(
        255, "`segmentation`: mask value for pixels that count in no loss or metric "
        "(CamVid: 11, void).", min=0, max=255)
    scale_range: list[float] = _field(
        [0.5, 2.0], "`segmentation` training: range of the random rescaling before "
        "the crop (image and mask together).")
    classes: Optional[str] = _field(
        None, "A fixed class list: `imagenet` (ImageNet-1k: folders named by WordNet id "
        "like n01440764, labels in ImageNet's order, English names in labels.txt) or "
        "a text file with one class per line. Folders may hold any subset; for "
        "TFRecords and TFDS it only names the labels. null: the data's own classes.")
    num_classes: int = _field(10, "Number of classes; must match the data.", min=2,
                              max=100_000, checkpoint=True)
    val_fraction: float = _field(
        0.1, "Share of train held out (stratified, fixed) when there is no eval data.",
        min=0.0, max=0.5, min_exclusive=True)
    tfds_name: Optional[str] = _field(
        None, "`tfds`: builder name, e.g. `cifar10`, `imagenette`, `imagenet2012`.")
    tfds_data_dir: Optional[str] = _field(
        None, "`tfds`: TFDS data directory (default ~/tensorflow_datasets).")
    tfds_manual_dir: Optional[str] = _field(
        None, "`tfds`: manual download directory (imagenet2012's tar files).")
    tfds_download: bool = _field(
        True, "`tfds`: download and prepare the dataset when it is not prepared yet.")
    train_split: str = _field("train", "`tfds`: split string for training, e.g. `train[:90%]`.")
    eval_split: Optional[str] = _field(
        None, "`tfds`: split for evaluation (e.g. `test`, `validation`); unset: holdout.")
    train_pattern: str = _field(
        "train-*", "`tfrecord`: file pattern of training shards inside `train_dir`.")
    eval_pattern: str = _field(
        "validation-*", "`tfrecord`: file pattern of eval shards inside `eval_dir`.")
    label_offset: int = _field(
        0, "`tfrecord`: subtracted from stored labels (1 for 1001-class ImageNet files).",
        min=0, max=1_000_000)
    synthetic_images: int = _field(
        6000, "`synthetic`: how many images to generate.", min=100, max=1_000_000)
    train_crop: Literal["random_resized", "pad_and_crop", "none"] = _field(
        "random_resized", "Classification training crop: Inception random-resized crop, pad-and-crop "
        "for small images (CIFAR), or none (resize only).")
    crop_scale: list[float] = _field(
        [0.08, 1.0], "random_resized: range of the crop's share of the image area.")
    crop_ratio: list[float] = _field(
        [0.75, 1.3333], "random_resized: range of the crop's aspect ratio.")
    pad_pixels: int = _field(4, "pad_and_crop: padding on each side.", min=0, max=1024)
    random_flip: bool = _field(True, "Random horizontal flips in training.")
    eval_crop_fraction: float = _field(
        0.875, "Evaluation: central crop of this share of the shorter side, then resize.",
        min=0.0, max=1.0, min_exclusive=True)
    randaugment_ops: int = _field(
        0, "RandAugment operations per image (0: off; paper-style recipes use 2).",
        min=0, max=10, only_for="classification")
    randaugment_magnitude: float = _field(
        0.5, "RandAugment strength, 0..1.", min=0.0, max=1.0)
    mixup_alpha: float = _field(0.0, "MixUp Beta(alpha, alpha); 0: off.", min=0.0, max=10.0,
        only_for="classification")
    cutmix_alpha: float = _field(0.0, "CutMix Beta(alpha, alpha); 0: off.", min=0.0, max=10.0,
        only_for="classification")
    cache: bool = _field(
        False, "Cache decoded source images in memory (small datasets).")
    shuffle_buffer: int = _field(10000, "Shuffle buffer size (images).", min=1,
                                 max=10_000_000)
    strict: bool = _field(
        False, "Fail on the first unreadable image instead of skipping it.")


@dataclass
class TrainConfig:
    mode: Literal["train_and_eval", "train", "eval"] = _field(
        "train_and_eval", "`train_and_eval` evaluates after every epoch; `eval` only "
        "evaluates the latest checkpoint.")
    epochs: int = _field(
        10, "Passes over the training data. 0 with `model.init_from`: the starting "
        "weights become the run's model as they are (to export a published model).",
        min=0, max=100_000)
    batch_size: int = _field(64, "Global batch size (all replicas together).", min=1,
                             max=1_000_000, checkpoint=True)
    optimizer: Literal["rmsprop", "sgd", "adamw"] = _field(
        "adamw", "`rmsprop` as in the paper, `sgd` with momentum, or `adamw`.",
        checkpoint=True)
    learning_rate: float = _field(
        0.002, "Peak learning rate at `base_batch_size`; scaled linearly with "
        "`batch_size`.", min=0.0, max=10.0, min_exclusive=True)
    base_batch_size: int = _field(
        256, "Batch size that `learning_rate` is quoted for.", min=1, max=1_000_000)
    schedule: Literal["cosine", "exponential", "constant"] = _field(
        "cosine", "Decay after warm-up: cosine to zero, exponential staircase "
        "(paper), or constant.")
    warmup_epochs: float = _field(1.0, "Linear warm-up from zero.", min=0.0, max=100_000)
    decay_rate: float = _field(
        0.99, "`exponential`: factor applied every `decay_epochs`.", min=0.0, max=1.0,
        min_exclusive=True)
    decay_epochs: float = _field(
        3.0, "`exponential`: epochs between decays.", min=0.0, max=100_000,
        min_exclusive=True)
    momentum: float = _field(0.9, "`rmsprop` / `sgd` momentum.", min=0.0, max=1.0)
    rho: float = _field(0.9, "`rmsprop` decay of the squared-gradient average.",
                        min=0.0, max=1.0)
    epsilon: float = _field(
        0.002, "`rmsprop`: TF1-style epsilon (inside the square root, as in the "
        "paper's TF code).", min=0.0, max=10.0, min_exclusive=True)
    nesterov: bool = _field(False, "`sgd`: Nesterov momentum.")
    weight_decay: float = _field(
        1e-5, "L2 on conv and dense kernels (not BatchNorm or biases); decoupled "
        "for `adamw` (use about 0.05 there).", min=0.0, max=1.0)
    decay_depthwise: bool = _field(
        True, "Weight decay on depthwise kernels too. The paper's TensorFlow code "
        "leaves them out (false), as MobileNetV1 advises: they have few parameters.")
    label_smoothing: float = _field(0.0, "Label smoothing.", min=0.0, max=0.5,
        only_for="classification")
    freeze_backbone_epochs: int = _field(
        0, "Fine-tuning: for this many epochs at the start only the classifier head "
        "trains (the backbone is frozen, its BatchNorm in inference mode); then every "
        "layer trains, with a warm-up and decay of its own. Needs `model.init_from`.",
        min=0, max=100_000, only_for="classification")
    backbone_lr_scale: float = _field(
        1.0, "Fine-tuning: the backbone's learning rate (and adamw's weight decay) as "
        "a fraction of the head's, so pretrained features change slowly. Needs "
        "`model.init_from`.", min=0.0, max=1.0, min_exclusive=True)
    clip_grad_norm: Optional[float] = _field(
        None, "Clip gradients to this global norm; null: no clipping.",
        min=0.0, max=1e6, min_exclusive=True)
    ema_decay: Optional[float] = _field(
        None, "Exponential moving average of the weights and BatchNorm statistics "
        "(paper 0.9999); evaluation and best.keras use the averages. null: off.",
        min=0.0, max=1.0, min_exclusive=True, checkpoint="is set")
    eval_every_epochs: int = _field(
        1, "Evaluate, and keep best.keras, every N epochs and after the last one. "
        "Short epochs spend a real share of their time on evaluation; a larger N "
        "trains more in the same time, and best.keras is chosen among fewer epochs.",
        min=1, max=100_000)
    checkpoint_every_steps: int = _field(
        0, "Also checkpoint every N steps within an epoch (0: at epoch ends only).",
        min=0, max=1_000_000_000)
    keep_checkpoints: int = _field(3, "How many recent checkpoints to keep.", min=1, max=1000)
    log_every_steps: int = _field(50, "Log line interval when not on a terminal.", min=1,
                                  max=1_000_000_000)
    steps_per_execution: int = _field(
        1, "Training steps per call into TensorFlow. The host waits for the device "
        "once per call (to check the loss is finite), so more steps per call keep a "
        "fast GPU or TPU busy between small steps. Log lines and checkpoints still "
        "fall on their steps.", min=1, max=100_000)


@dataclass
class ExportConfig:
    quant: list[Literal["float32", "fp16", "dynamic", "int8"]] = _field(
        ["float32", "int8"], "TFLite modes to write: float32, fp16 (float16 weights), "
        "dynamic (int8 weights), int8 (int8 weights and activations).")
    int8_input: Literal["uint8", "int8", "float32"] = _field(
        "uint8", "`int8` mode input type; uint8 takes raw 0..255 pixels.")
    int8_output: Literal["float32", "uint8", "int8"] = _field(
        "float32", "`int8` mode output type.")
    int8_float_stem: bool = _field(
        True, "`int8` mode: the stem and the first depthwise conv run in float, where "
        "one int8 scale per tensor loses most; false: every layer in int8 (for "
        "integer-only accelerators).")
    calibration_steps: int = _field(
        1024, "int8 calibration steps, one training image each (eval preprocessing); "
        "BENCHMARKS.md measures what fewer cost.", min=1,
        max=1_000_000)
    calibration_percentile: float = _field(
        99.99, "int8 activation ranges cover this percentile of the calibration values "
        "at each end; 100: plain min/max, which lets rare outliers coarsen a whole "
        "tensor.", min=90, max=100)
    eval_images: Optional[int] = _field(
        None, "Evaluation images for the report's accuracy; null: all.", min=1,
        max=100_000_000)
    latency_runs: int = _field(50, "Timed runs per model (median reported).", min=1,
                               max=100_000)
    threads: int = _field(1, "Interpreter threads for the latency figure.", min=1, max=1024)


@dataclass
class RuntimeConfig:
    seed: Optional[int] = _field(
        0, "Random seed for weights, data order and augmentation; null for none.", min=0,
        max=2**31 - 1)
    strategy: Literal["default", "mirrored", "multi_worker_mirrored", "tpu"] = _field(
        "default", "tf.distribute strategy: one device, all local GPUs, several "
        "machines from TF_CONFIG, or a TPU.")
    tpu: Optional[str] = _field(None, "`tpu`: TPU name or address (null: local).")
    mixed_precision: Optional[Literal["mixed_float16", "mixed_bfloat16"]] = _field(
        None, "Keras mixed-precision policy; null: float32 (best on CPU).")
    jit_compile: bool = _field(
        False, "XLA-compile the train step (for GPU/TPU; it makes CPU training slower).")


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ----------------------------------------------------------------------------
# Checking values against the schema


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a)
                           for a in typing.get_args(tp))
    if origin is list:
        return "a list of " + _type_name(typing.get_args(tp)[0])
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, str(tp))


def _coerce(value, tp, where: str):
    """Returns `value` as type `tp`, or raises ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}{extra}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)):  # `--set export.quant=int8`
            value = [value]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected a non-empty list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
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
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _check_range(value, meta, where: str):
    if value is None or isinstance(value, (list, str, bool)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value <= lo if meta.get("min_exclusive") else value < lo):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"{where}: must be {op} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: must be <= {hi}, got {value}")


def _unknown_key(key: str, known, where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, list(known), n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(known)}"
    name = f"{where}.{key}" if where else key
    return ConfigError(f"{name}: unknown key{extra}")


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _section_types(cls) -> dict:
    return typing.get_type_hints(cls)


# Keys that were renamed: configs saved by older runs still load.
RENAMED = {("export", "calibration_images"): "calibration_steps"}


def _current_key(section: str, key):
    return RENAMED.get((section, key), key)


def _apply(section_obj, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = _section_types(type(section_obj))
    fields = {f.name: f for f in dataclasses.fields(section_obj)}
    current = [_current_key(where, key) for key in values]
    twice = sorted({str(k) for k in current if current.count(k) > 1})
    if twice:
        raise ConfigError(f"{where}.{twice[0]}: given twice (once under its old name)")
    for key, value in zip(current, values.values()):
        if key not in fields:
            raise _unknown_key(str(key), fields, where)
        dotted = f"{where}.{key}"
        value = _coerce(value, hints[key], dotted)
        _check_range(value, fields[key].metadata, dotted)
        setattr(section_obj, key, value)


def _fields_marked(cfg: Config, mark: str):
    """(dotted key, value, the mark, default) for every key whose field carries `mark`."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            if f.metadata.get(mark):
                default = f.default_factory() if f.default_factory is not \
                    dataclasses.MISSING else f.default
                yield (f"{section.name}.{f.name}", getattr(values, f.name),
                       f.metadata[mark], default)


def checkpoint_identity(cfg: Config) -> dict:
    """What a run's checkpoints depend on (the keys marked `checkpoint`):
    {dotted key: value}; a key marked "is set" gives whether it is set."""
    return {(f"{key} is set" if mark == "is set" else key):
            (value is not None if mark == "is set" else value)
            for key, value, mark, _ in _fields_marked(cfg, "checkpoint")}


def _check_task(cfg: Config):
    for key, value, task, default in _fields_marked(cfg, "only_for"):
        if task != cfg.task.name and value != default:
            raise ConfigError(f"{key}: not for task.name: {cfg.task.name}")
    segmentation = cfg.task.name == "segmentation"
    if not segmentation:
        return
    if cfg.data.source not in ("synthetic", "folder"):
        raise ConfigError(f"data.source: {cfg.data.source} has no masks; segmentation "
                          "reads `folder` (images/ and masks/) or `synthetic`")
    if cfg.model.remove_early_strides:
        raise ConfigError("model.remove_early_strides: not for segmentation (use "
                          "task.output_stride)")
    if not cfg.model.include_top:
        raise ConfigError("model.include_top: segmentation always has its head")
    if cfg.data.ignore_index < cfg.data.num_classes:
        raise ConfigError(f"data.ignore_index: {cfg.data.ignore_index} is a class "
                          f"(data.num_classes is {cfg.data.num_classes}); use a value "
                          f">= {cfg.data.num_classes}")


def _check_consistency(cfg: Config):
    _check_task(cfg)
    lo, hi = (cfg.data.scale_range + [0, 0])[:2]
    # Past 4x a 480 px frame is ~2000 px wide per view: memory, not augmentation.
    if len(cfg.data.scale_range) != 2 or not 0 < lo <= hi <= 4:
        raise ConfigError(f"data.scale_range: expected [low, high] with 0 < low <= high "
                          f"<= 4, got {cfg.data.scale_range}")
    for key in ("crop_scale", "crop_ratio"):
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
                   "train.epochs": cfg.train.epochs == 0}
    for key, used in fine_tuning.items():
        if used and not cfg.model.init_from:
            raise ConfigError(f"{key}: {getattr(cfg.train, key.split('.')[1])} needs "
                              "model.init_from (there is no pretrained backbone)")
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


# ----------------------------------------------------------------------------
# Loading, overriding and saving


def from_dict(raw: dict | None, source: str = "config") -> Config:
    """Builds a Config from nested plain data, checking every key."""
    cfg = Config()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for name, values in raw.items():
        if name not in _section_names():
            raise ConfigError(f"{source}: {_unknown_key(str(name), _section_names(), '')}")
        try:
            _apply(getattr(cfg, name), values or {}, name)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    try:
        _check_consistency(cfg)
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


def load(path: str | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config (or the defaults when `path` is None) and applies overrides."""
    raw: dict = {}
    source = "defaults"
    if path:
        source = path
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
    for text in overrides:
        (section, key), value = parse_override(text)
        # Check the override alone first, so the message points at --set.
        probe = Config()
        if section not in _section_names():
            raise ConfigError(f"--set {_unknown_key(section, _section_names(), '')}")
        try:
            _apply(getattr(probe, section), {key: value}, section)
        except ConfigError as e:
            raise ConfigError(f"--set {e}") from None
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        key = _current_key(section, key)
        for old_name in [k for k in raw[section] if _current_key(section, k) == key]:
            del raw[section][old_name]  # the override replaces the file's value
        raw[section][key] = value
    return from_dict(raw, source)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: str) -> None:
    """Writes the fully resolved config atomically, so a run can be repeated exactly."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def reference_markdown() -> str:
    """The config reference table of docs/config.md, generated from the schema."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints = _section_types(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append(
                f"| `{section.name}.{f.name}` | {_type_name(hints[f.name])} | "
                f"`{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}` | "
                f"{f.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
