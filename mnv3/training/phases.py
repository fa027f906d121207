"""Training phases. Fine-tuning: the pretrained backbone frozen for the first
train.freeze_backbone_epochs while the task's head trains, then the whole
network. A frozen Keras BatchNorm runs in inference mode, so small batches of
new data leave its pretrained statistics alone; with train.freeze_batch_norm
the pretrained BatchNorm layers stay that way when the rest trains.
Quantization-aware training: the int8 rounding on for the last
train.qat_epochs."""

from __future__ import annotations

import keras

from mnv3.console import say
from mnv3.model.quantize_aware import set_quantizing


def backbone_variables(model, head_layers) -> list:
    return [v for layer in model.layers if layer.name not in head_layers
            for v in layer.trainable_weights]


def pretrained_batch_norm(model, head_layers, fresh: list[str]) -> list[str]:
    """The BatchNorm layers whose statistics came from the pretrained source:
    those outside the head that did not start afresh."""
    return [layer.name for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            and layer.name not in head_layers and layer.name not in fresh]


def frozen_batch_norm(cfg, model, head_layers, start, run_dir) -> list[str]:
    """With train.freeze_batch_norm, the pretrained BatchNorm layers: not those
    that started afresh, as `start` planned them or, when the run resumes, as
    it recorded them in init_from.json."""
    if not cfg.train.freeze_batch_norm:
        return []
    fresh = start.fresh if start else run_dir.read_init_record().get("layers_initialised", [])
    return pretrained_batch_norm(model, head_layers, fresh)


class Phases:
    def __init__(self, model, head_layers: tuple[str, ...], freeze_epochs: int,
                 frozen_batch_norm: list[str] = (), qat_from: int | None = None):
        """`qat_from`: the first quantization-aware epoch (0-based) of a model
        made by quantize_aware; None: none."""
        self.model, self.head_layers, self.freeze_epochs = model, head_layers, freeze_epochs
        self.frozen_batch_norm = set(frozen_batch_norm)
        self.qat_from = qat_from
        self._frozen = None

    def enter(self, epoch: int) -> bool:
        """Sets which layers train in `epoch`, and whether the int8 rounding is
        on; True when that changed (the steps must then be traced anew)."""
        trainable = self._set_trainable(epoch)
        return self._set_quantizing(epoch) or trainable

    def keeps_best(self, epoch: int) -> bool:
        """Whether `epoch` may give best.keras: a quantization-aware run's
        best.keras is one of its quantization-aware epochs."""
        return self.qat_from is None or epoch >= self.qat_from

    def _set_quantizing(self, epoch: int) -> bool:
        if self.qat_from is None:
            return False
        on = epoch >= self.qat_from
        changed = set_quantizing(self.model, on)
        if changed and on:
            say(f"epoch {epoch + 1} on: quantization-aware (int8 rounding simulated)")
        return changed

    def _set_trainable(self, epoch: int) -> bool:
        if not self.freeze_epochs and not self.frozen_batch_norm:
            return False
        frozen = epoch < self.freeze_epochs
        if frozen == self._frozen:
            return False
        for layer in self.model.layers:
            if layer.name not in self.head_layers:
                layer.trainable = not frozen and layer.name not in self.frozen_batch_norm
        self._frozen = frozen
        if frozen:
            say(f"epochs {epoch + 1}-{self.freeze_epochs}: only the head "
                f"({', '.join(self.head_layers)}) trains; the backbone is frozen")
        else:
            kept = f", its {len(self.frozen_batch_norm)} pretrained BatchNorm layers in " \
                "inference mode" if self.frozen_batch_norm else ""
            say(f"epoch {epoch + 1} on: the whole network trains{kept}")
        return True
