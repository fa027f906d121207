"""The config schema as data: one dataclass per section, each key a field
whose metadata holds its help text, limits and marks (`only_for` a task,
`checkpoint` identity). A new key is one field here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from mnv3.errors import UserError


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
    name: Literal["classification", "segmentation", "detection"] = _field(
        "classification", "What the network predicts: a class per image, a class "
        "per pixel (the paper's LR-ASPP head; data needs masks), or labelled boxes "
        "(the paper's SSDLite head; data needs box annotations).", checkpoint=True)
    output_stride: Literal[8, 16, 32] = _field(
        16, "`segmentation`: the backbone's total stride; the stages past it run "
        "dilated for denser features (paper: 16; 8 costs more, 32 is undilated).",
        checkpoint=True)
    reduced_tail: bool = _field(
        True, "`segmentation`, `detection`: halve the channels of the last stage, as "
        "the paper's segmentation and detection models do (cheaper, no loss of "
        "accuracy there). These layers then start afresh under model.init_from.",
        checkpoint=True)
    head_channels: int = _field(
        128, "`segmentation`: width of the LR-ASPP head's 1x1 branch (paper: 128).",
        min=8, max=4096, checkpoint=True)
    anchor_scales: list[float] = _field(
        [0.2, 0.95], "`detection`: [smallest, largest] anchor size, as a share of the "
        "image side, spread evenly over the six detection maps (SSD's s_min, s_max).",
        min=0.0, max=1.0, min_exclusive=True, only_for="detection", checkpoint=True)
    aspect_ratios: list[float] = _field(
        [1.0, 2.0, 0.5, 3.0, 0.3333], "`detection`: anchor width/height ratios on every "
        "map but the first (which has 1, 2 and 1/2); each map adds a square between "
        "its size and the next's.", min=0.05, max=20.0, only_for="detection",
        checkpoint=True)
    max_boxes: int = _field(
        100, "`detection`: most labelled boxes in one photo (COCO's is under 100); a "
        "photo with more is refused when the data is read.", min=1, max=1000,
        only_for="detection")


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
    box_crop_area: list[float] = _field(
        [0.1, 1.0], "`detection`: SSD's random crop in training, the range of its share "
        "of the photo's area (SSD's is [0.1, 1]); [1, 1] keeps the whole photo. Crops "
        "pay off over long schedules and cost a short run most of what it learns "
        "(BENCHMARKS.md, detection).", min=0.0, max=1.0, min_exclusive=True,
        only_for="detection")
    box_zoom_out: float = _field(
        1.0, "`detection`: SSD's zoom-out in training: on half the views the photo sits "
        "at a random place on a grey canvas up to this many times its height and width "
        "(SSD's 4), so its objects appear smaller; 1 never zooms out.", min=1.0, max=16.0,
        only_for="detection")
    photometric: bool = _field(
        False, "SSD's photometric distortions on training views: random brightness, "
        "contrast, saturation and hue, each on half the views. Where colour tells "
        "the classes apart it can cost accuracy (the fruits and the flowers: BENCHMARKS.md).")
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
    freeze_batch_norm: bool = _field(
        False, "Fine-tuning: the pretrained BatchNorm layers stay in inference mode, "
        "their moving statistics and scale frozen, while the backbone trains: "
        "training-mode batches of new photos would replace the pretrained statistics "
        "with their own. Layers that start afresh train as usual. Needs "
        "`model.init_from`.")
    qat_epochs: int = _field(
        0, "Quantization-aware training: the last N epochs train with the int8 "
        "export's rounding simulated (weights per channel, activations over tracked "
        "ranges), and the int8 export takes the ranges they trained instead of "
        "calibrating. best.keras is then chosen among these epochs. A short QAT run "
        "from a trained model: `model.init_from` its best.keras, epochs = qat_epochs.",
        min=0, max=100_000, checkpoint=True)
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
    int8_ranges: Literal["trained", "calibrated"] = _field(
        "trained", "`int8` mode of a model trained with `train.qat_epochs`: the "
        "activation ranges it trained with, or ranges calibrated afresh (a check). "
        "Other models are always calibrated.")
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
class BudgetConfig:
    """The latency-budget search (`mnv3-budget`): the grid it times and what
    each candidate it trains gets."""
    variants: list[Literal["large", "small"]] = _field(
        ["large", "small"], "`mnv3-budget`: model.variant values to try.")
    minimalistic: list[bool] = _field(
        [False, True], "`mnv3-budget`: model.minimalistic values to try.")
    alphas: list[float] = _field(
        [0.35, 0.5, 0.75, 1.0], "`mnv3-budget`: model.alpha values to try.",
        min=0.0, max=4.0, min_exclusive=True)
    image_sizes: list[int] = _field(
        [96, 128, 160, 192, 224, 256], "`mnv3-budget`: data.image_size values to try "
        "(square inputs).", min=32, max=1024)
    epochs: Optional[int] = _field(
        None, "`mnv3-budget`: epochs each trained candidate gets, the same for all "
        "(the recipe's schedule, warm-up and head-only epochs included, as in "
        "train.epochs); null: train.epochs.", min=1, max=100_000)
    max_trained: int = _field(
        4, "`mnv3-budget`: most candidates trained: the front's members under the "
        "budget with the most multiply-adds (the config as given is trained too, "
        "for comparison).", min=1, max=1000)
    calibration_images: int = _field(
        32, "`mnv3-budget`: training images calibrating each candidate's int8 file "
        "before it is timed (the ranges do not change its speed; the trained "
        "candidates' exports calibrate with export.calibration_steps).", min=1,
        max=100_000)
    adb_serial: Optional[str] = _field(
        None, "`mnv3-budget`: time on this Android device (`adb devices` lists "
        "serials) with TFLite's benchmark_model instead of on this machine; null: "
        "LiteRT with XNNPACK here, export.threads threads.")
    benchmark_model: str = _field(
        "/data/local/tmp/benchmark_model", "`mnv3-budget`: path of TFLite's "
        "benchmark_model binary on the Android device (see README, latency budget).")


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


def field_default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def fields_marked(cfg: Config, mark: str):
    """(dotted key, value, the mark, default) for every key whose field carries `mark`."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            if f.metadata.get(mark):
                yield (f"{section.name}.{f.name}", getattr(values, f.name),
                       f.metadata[mark], field_default(f))


def checkpoint_identity(cfg: Config) -> dict:
    """What a run's checkpoints depend on (the keys marked `checkpoint`):
    {dotted key: value}; a key marked "is set" gives whether it is set."""
    return {(f"{key} is set" if mark == "is set" else key):
            (value is not None if mark == "is set" else value)
            for key, value, mark, _ in fields_marked(cfg, "checkpoint")}
