"""What a model costs: parameters and multiply-adds, counted as the paper
counts them (one 1 x H x W x 3 forward pass)."""

from __future__ import annotations

from keras import layers


def layer_madds(layer) -> int:
    """Multiply-adds of one layer for a batch of one (convs, dense, SE scaling;
    the cheap elementwise activations and BatchNorm, folded at export, are not
    counted, as in the paper)."""
    if isinstance(layer, layers.DepthwiseConv2D):
        _, h, w, c = layer.output.shape
        kh, kw = layer.kernel_size
        return h * w * c * kh * kw
    if isinstance(layer, layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1]
        return h * w * c_out * kh * kw * c_in // layer.groups
    if isinstance(layer, layers.Dense):
        return layer.input.shape[-1] * layer.units
    if isinstance(layer, layers.Multiply):
        # The squeeze-excite rescale: one multiply per element of the map.
        _, h, w, c = layer.output.shape
        return h * w * c
    return 0


def summarize(model) -> dict:
    rows = []
    for layer in model.layers:
        params = layer.count_params()
        madds = layer_madds(layer)
        if params or madds:
            rows.append({"layer": layer.name, "output": list(layer.output.shape[1:])
                         if not isinstance(layer.output, list) else None,
                         "params": params, "madds": madds})
    return {
        "name": model.name,
        "input": list(model.input.shape[1:]),
        "params": model.count_params(),
        "madds": sum(r["madds"] for r in rows),
        "layers": rows,
    }
