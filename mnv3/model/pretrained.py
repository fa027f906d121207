"""Starting weights for a run (`model.init_from`): keras.applications' published
ImageNet files, any weights file, or an earlier run.

Every source becomes the same thing, its layers that hold weights in network
order, and is matched to ours position by position: our builder follows
keras.applications layer for layer, so a published file, a keras.applications
model and an mnv3 run all line up without a table of names. Only the
classifier may differ, in its class count; it then starts afresh.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from mnv3 import published
from mnv3.errors import UserError, first_line
from mnv3.model.builder import HEAD_LAYERS
from mnv3.model.layers import with_keras_batch_norm
from mnv3.model.lraspp import HEAD_LAYERS as SEGMENTER_HEAD
from mnv3.model.quantize_aware import range_layer
from mnv3.model.saved import load_keras_file

RUN_MODEL = "best.keras"  # what a run directory offers as its model


@dataclass
class Source:
    spec: str  # model.init_from as configured
    path: str  # the file the weights came from
    sha256: str
    layers: list[tuple[str, list[np.ndarray]]]  # layers with weights, network order


@dataclass
class Start:
    """What a fresh run starts from: the weights for each of our layers that a
    source provides, and the layers that keep their initial values."""
    source: Source
    weights: dict[str, list[np.ndarray]]
    fresh: list[str] = field(default_factory=list)

    def apply(self, model) -> None:
        for name, arrays in self.weights.items():
            model.get_layer(name).set_weights(arrays)

    def record(self) -> dict:
        """For the run directory: what the run started from, checkably."""
        return {"init_from": self.source.spec, "file": os.path.abspath(self.source.path),
                "sha256": self.source.sha256, "layers_loaded": len(self.weights),
                "layers_initialised": self.fresh}

    def summary(self) -> str:
        fresh = f"; {', '.join(self.fresh)} initialised anew" if self.fresh else ""
        return (f"starting from {self.source.spec} ({self.source.path}, sha256 "
                f"{self.source.sha256[:12]}): {len(self.weights)} layers loaded{fresh}")


def plan(cfg, task) -> Start:
    """Reads `cfg.model.init_from` and matches it to the model `task` builds.
    Raises UserError (one line) for a missing, unreadable, non-finite or
    mismatched source."""
    target = task.build(cfg, image_size=None)
    source = read(cfg.model.init_from, cfg, target)
    _refuse_non_finite(source)
    return match(target, source, cfg.model, task)


def _refuse_non_finite(source: Source) -> None:
    """NaN or inf in a source is the source's fault, not the learning rate's:
    named before anything is written."""
    for name, arrays in source.layers:
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise UserError(f"model.init_from: {source.spec}: layer {name!r} holds "
                            f"non-finite values (NaN or inf) in {source.path}; these "
                            "weights cannot start a run")


def read(spec: str, cfg, target) -> Source:
    """The weights `spec` names. `target`, the model `cfg` builds, is only loaded
    into for a .weights.h5 file, which carries no architecture of its own."""
    if spec == "imagenet":
        path = _published_file(cfg.model)
        return Source(spec, path, _sha256(path), _read_legacy_h5(path))
    if not os.path.exists(spec):
        raise UserError(f"model.init_from: {spec}: not found (expected `imagenet`, a "
                        "weights file or a run directory)")
    path = spec
    if os.path.isdir(spec):
        path = os.path.join(spec, RUN_MODEL)
        if not os.path.exists(path):
            raise UserError(f"model.init_from: {spec}: a directory without {RUN_MODEL}; "
                            "expected a run directory that has finished an epoch")
    if not os.path.isfile(path):  # a FIFO or a device would block the reader
        raise UserError(f"model.init_from: {path}: not a regular file (expected a weights "
                        "file or a run directory)")
    if path.endswith(".keras"):
        layers = _read_keras_model(path)
    elif path.endswith(".weights.h5"):
        layers = _read_keras_weights(path, cfg, target)
    elif path.endswith((".h5", ".hdf5")):
        layers = _read_legacy_h5(path)
    else:
        raise UserError(f"model.init_from: {path}: expected a .keras, .weights.h5 or .h5 "
                        "file, or a run directory")
    return Source(spec, path, _sha256(path), layers)


def match(model, source: Source, model_cfg, task) -> Start:
    """Pairs our layers with the source's, in order. The source is a backbone, a
    classifier (backbone and classifier head), or a model of this very task. A
    task head of another kind starts afresh; any other difference is refused
    unless the task allows it for that layer (a classifier's class count, a
    segmenter's halved last stage)."""
    ours = [(layer.name, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]
    body = [o for o in ours if o[0] not in task.head_layers]
    theirs = source.layers
    from_segmenter = task.head_layers != SEGMENTER_HEAD and \
        any(name in SEGMENTER_HEAD for name, _ in theirs)
    if from_segmenter:  # an LR-ASPP head is no use to another task: its backbone is
        theirs = [layer for layer in theirs if layer[0] not in SEGMENTER_HEAD]
    fits = len(theirs) in (len(ours), len(body), len(body) + len(HEAD_LAYERS))
    if len(theirs) == len(ours) or task.head_layers == HEAD_LAYERS:
        paired = ours  # the same task's model: its head too
    else:
        paired = body  # a classifier's head is no use to another task
    start = Start(source, {})
    for (name, shapes), (their_name, arrays) in zip(paired, theirs):
        their_shapes = [tuple(a.shape) for a in arrays]
        if their_shapes == shapes:
            start.weights[name] = arrays
        elif task.may_start_afresh(name, shapes, their_shapes):
            start.fresh.append(name)
        elif from_segmenter:
            raise UserError(
                f"model.init_from: {source.spec}: a segmenter whose last stage has half "
                f"its channels (task.reduced_tail), so its {their_name!r} "
                f"({_shapes(their_shapes)}) cannot start our {name!r} "
                f"({_shapes(shapes)}); a segmenter's backbone starts a classifier only "
                "when trained with task.reduced_tail: false (or start from a classifier "
                "run or `imagenet`)")
        else:
            raise UserError(
                f"model.init_from: {source.spec}: layer {their_name!r} has weights "
                f"{_shapes(their_shapes)} where our {name!r} has {_shapes(shapes)}; the "
                f"weights are for another model than {_describe(model_cfg)} (check "
                "model.variant, alpha and minimalistic)")
    if not fits:  # every layer fits as far as both go: say what the counts are
        raise UserError(
            f"model.init_from: {source.spec}: {len(theirs)} layers hold weights, but "
            f"{_describe(model_cfg)} has {len(body)} without a head and "
            f"{len(body) + len(HEAD_LAYERS)} with a classifier head; the weights are "
            "for another model")
    start.fresh += [name for name, _ in ours if name not in start.weights
                    and name not in start.fresh]
    return start


def only_class_count_differs(ours, theirs) -> bool:
    return len(ours) == len(theirs) and all(
        len(a) == len(b) and a[:-1] == b[:-1] for a, b in zip(ours, theirs))


# --- reading each kind of source ---------------------------------------------------


def _published_file(model_cfg) -> str:
    """The published ImageNet file from Keras' cache, downloaded there if missing."""
    name = published.file_name(model_cfg, model_cfg.include_top)
    cached = os.path.join(published.cache_dir(), name)
    if os.path.isfile(cached):
        return cached
    url = published.BASE_URL + name
    import keras

    try:
        return keras.utils.get_file(name, url, cache_subdir="models")
    except Exception as e:  # no network: urllib, socket and Keras' own errors
        raise UserError(f"model.init_from: imagenet: {name} is not in "
                        f"{published.cache_dir()} and could not be downloaded "
                        f"({first_line(e)}); fetch {url} on a machine with network "
                        f"access and copy it into {published.cache_dir()}") from None


def _read_legacy_h5(path: str) -> list:
    """The HDF5 layout of keras.applications' published files (and of Keras 2's
    save_weights / save): `layer_names` on the root, `weight_names` on each
    layer's group, both possibly split into numbered chunks."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            names = _attr_list(group, "layer_names")
            if names is None:
                raise UserError(f"model.init_from: {path}: not a Keras HDF5 weights "
                                "file (no layer_names); Keras 3 weights need the "
                                ".weights.h5 suffix")
            layers = []
            for name in names:
                weight_names = _attr_list(group[name], "weight_names") or []
                if weight_names:
                    layers.append((name, [np.asarray(group[name][w]) for w in weight_names]))
            return layers
    except UserError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ValueError on damage
        raise UserError(f"model.init_from: {path}: cannot be read as HDF5 weights "
                        f"({first_line(e)})") from None


def _attr_list(group, key: str) -> list[str] | None:
    if key in group.attrs:
        values = list(group.attrs[key])
    elif f"{key}0" in group.attrs:  # Keras splits attributes over 64 KB into chunks
        values, i = [], 0
        while f"{key}{i}" in group.attrs:
            values += list(group.attrs[f"{key}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _read_keras_model(path: str) -> list:
    return _layers_of(load_keras_file(
        path, f"model.init_from: {path}: damaged or not a .keras file"))


def _read_keras_weights(path: str, cfg, model) -> list:
    """Keras 3 weight files carry no architecture: they load into the model this
    config builds, or not at all. That model trains with our fused BatchNorm; a
    file saved from a run's best.keras has Keras' own, so its twin is tried too."""
    failure = None
    # The twin is cloned only when the config's own model does not take the file.
    for make in (lambda: model, lambda: with_keras_batch_norm(model)):
        candidate = make()
        try:
            with warnings.catch_warnings():
                # Keras warns, and carries on, when it leaves a layer unloaded.
                warnings.simplefilter("error")
                candidate.load_weights(path)
            return _layers_of(candidate)
        except Exception as e:
            failure = failure or e
    raise UserError(f"model.init_from: {path}: does not load into "
                    f"{_describe(cfg.model)} with {cfg.data.num_classes} classes "
                    f"({first_line(failure)}); a .weights.h5 file must match exactly, a "
                    "run's best.keras need not")


def _layers_of(model) -> list:
    # A quantization-aware model's tracked ranges are not weights to start from.
    return [(layer.name, [np.asarray(w) for w in layer.get_weights()])
            for layer in model.layers if layer.weights and not range_layer(layer)]


# --- small helpers -------------------------------------------------------------------


def _shapes(shapes) -> str:
    return " ".join("x".join(str(d) for d in s) for s in shapes)


def _describe(model_cfg) -> str:
    return "MobileNetV3-" + published.describe(model_cfg.variant, model_cfg.alpha,
                                               model_cfg.minimalistic)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise UserError(f"model.init_from: {path}: cannot be read "
                        f"({e.strerror or e})") from None
    return digest.hexdigest()
