"""What keras.applications publishes for MobileNetV3: which ImageNet weight files
exist, their names and where they come from, and the ImageNet class names.
No TensorFlow here, so configs can be checked against it cheaply."""

from __future__ import annotations

import os

from mnv3.errors import UserError

# The combinations Keras publishes ImageNet weights for: (variant, alpha, minimalistic).
PUBLISHED = (("large", 0.75, False), ("large", 1.0, False), ("large", 1.0, True),
             ("small", 0.75, False), ("small", 1.0, False), ("small", 1.0, True))
BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"


def describe(variant: str, alpha: float, minimalistic: bool) -> str:
    return f"{variant} alpha {alpha:g}{' minimalistic' if minimalistic else ''}"


def check_published(model_cfg) -> None:
    key = (model_cfg.variant, model_cfg.alpha, model_cfg.minimalistic)
    if key not in PUBLISHED:
        known = ", ".join(describe(*k) for k in PUBLISHED)
        raise UserError(f"model.init_from: Keras publishes no ImageNet weights for "
                        f"{describe(*key)}; it does for {known}")


def file_name(model_cfg, include_top: bool) -> str:
    """The published file's name, as keras.applications names it."""
    check_published(model_cfg)
    name = (f"{model_cfg.variant}{'_minimalistic' if model_cfg.minimalistic else ''}"
            f"_224_{model_cfg.alpha}_float")
    return f"weights_mobilenet_v3_{name}{'' if include_top else '_no_top_v2'}.h5"


def cache_dir() -> str:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def imagenet_synsets() -> list[str]:
    """The 1,000 ImageNet-1k WordNet ids (n01440764, ...) in label order."""
    return _tfds_file(("datasets", "imagenet2012", "labels.txt"))


def imagenet_class_names() -> list[str]:
    """Human-readable ImageNet-1k names in label order ("tench", "goldfish", ...):
    the first synonym, or the full entry where two classes share it."""
    try:
        from tensorflow_datasets.datasets.siscore import labels
        full = list(labels.IMAGENET_LABELS_LIST)
    except (ImportError, AttributeError):
        raise UserError("the ImageNet class names come from the installed "
                        "tensorflow-datasets package, which lacks them; install the "
                        "version in requirements.txt") from None
    first = [name.split(",")[0].strip() for name in full]
    return [short if first.count(short) == 1 else full[i].strip()
            for i, short in enumerate(first)]


def _tfds_file(parts) -> list[str]:
    try:
        import tensorflow_datasets
    except ImportError:
        raise UserError("the ImageNet class ids come from the tensorflow-datasets "
                        "package; install requirements.txt") from None
    path = os.path.join(os.path.dirname(tensorflow_datasets.__file__), *parts)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split()
    except OSError:
        raise UserError(f"{path}: missing from the installed tensorflow-datasets; "
                        "install the version in requirements.txt") from None
