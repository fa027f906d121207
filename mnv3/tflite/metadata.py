"""TFLite model metadata, so MediaPipe Tasks' ImageClassifier and ImageSegmenter
(what Android apps use) load a model with no code: name, description, input
image properties and normalisation, the output's description, and labels.txt
as an associated file of the output tensor.

Written with the metadata and TFLite flatbuffer schemas that ship with mediapipe
(its metadata *writers* import a compiled module the wheel lacks).
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np
from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg_md
from mediapipe.tasks.metadata import metadata_schema_py_generated as md
from mediapipe.tasks.metadata import schema_py_generated as tfl

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"


def _labels_file() -> md.AssociatedFileT:
    labels = md.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "Class names, one per line, in output order."
    labels.type = md.AssociatedFileType.TENSOR_AXIS_LABELS
    return labels


def classifier_output(num_classes: int) -> md.TensorMetadataT:
    scores = md.TensorMetadataT()
    scores.name = "probabilities"
    scores.description = f"Probabilities of the {num_classes} classes in labels.txt."
    scores.content = md.ContentT()
    scores.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    scores.content.contentProperties = md.FeaturePropertiesT()
    scores.stats = md.StatsT()
    scores.stats.min, scores.stats.max = [0.0], [1.0]
    scores.associatedFiles = [_labels_file()]
    return scores


def segmenter_output(num_classes: int) -> md.TensorMetadataT:
    """Per-pixel class logits, 1 x height x width x classes: for MediaPipe a stack
    of greyscale masks (content dimensions 1..2), one per class in labels.txt."""
    logits = md.TensorMetadataT()
    logits.name = "segmentation_logits"
    logits.description = (f"Per-pixel logits of the {num_classes} classes in "
                          "labels.txt, at the input's height and width.")
    logits.content = md.ContentT()
    logits.content.contentPropertiesType = md.ContentProperties.ImageProperties
    logits.content.contentProperties = md.ImagePropertiesT()
    logits.content.contentProperties.colorSpace = md.ColorSpaceType.GRAYSCALE
    logits.content.range = md.ValueRangeT()
    logits.content.range.min, logits.content.range.max = 1, 2
    logits.associatedFiles = [_labels_file()]
    return logits


def segmenter_softmax() -> md.CustomMetadataT:
    """MediaPipe's SEGMENTER_METADATA: apply softmax to the logits, so its
    confidence masks are probabilities (its category mask is their argmax)."""
    options = seg_md.ImageSegmenterOptionsT()
    options.activation = seg_md.Activation.SOFTMAX
    builder = flatbuffers.Builder(0)
    builder.Finish(options.Pack(builder), b"V001")
    custom = md.CustomMetadataT()
    custom.name = "SEGMENTER_METADATA"
    custom.data = list(builder.Output())
    return custom


def _detection_tensor(name: str, description: str) -> md.TensorMetadataT:
    tensor = md.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = md.ContentT()
    tensor.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    tensor.content.contentProperties = md.FeaturePropertiesT()
    # Dimension 2 of [1, detections, 4] / [1, detections] holds one detection's values.
    tensor.content.range = md.ValueRangeT()
    tensor.content.range.min, tensor.content.range.max = 2, 2
    return tensor


def detector_outputs(num_classes: int) -> dict[str, md.TensorMetadataT]:
    """The four outputs of TFLite's detection post-processing, by signature
    name (tflite/postprocess.py), under the names MediaPipe's ObjectDetector
    looks for: location (boxes as ymin, xmin, ymax, xmax in 0..1), category
    (indices into labels.txt), score, and number of detections."""
    location = _detection_tensor("location", "Detected boxes: ymin, xmin, ymax, xmax, "
                                 "as shares of the image's height and width.")
    location.content.contentPropertiesType = md.ContentProperties.BoundingBoxProperties
    box = location.content.contentProperties = md.BoundingBoxPropertiesT()
    box.index = [1, 0, 3, 2]  # where left, top, right, bottom are in each row
    box.type = md.BoundingBoxType.BOUNDARIES
    box.coordinateType = md.CoordinateType.RATIO
    category = _detection_tensor("category", f"Class of each detection: a line of "
                                 f"labels.txt ({num_classes} classes).")
    labels = _labels_file()
    labels.type = md.AssociatedFileType.TENSOR_VALUE_LABELS  # values are indices
    category.associatedFiles = [labels]
    score = _detection_tensor("score", "Score of each detection (softmax, 0..1).")
    count = md.TensorMetadataT()
    count.name, count.description = "number of detections", "How many rows hold detections."
    return {"detection_boxes": location, "detection_classes": category,
            "detection_scores": score, "num_detections": count}


def _metadata(name: str, description: str, mean: float, std: float,
              outputs: list[md.TensorMetadataT], custom: list) -> bytes:
    image = md.TensorMetadataT()
    image.name = "image"
    image.description = ("RGB image, values 0..255 (the model normalises them itself), "
                         "batch 1, fixed height and width.")
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    normalization = md.ProcessUnitT()
    normalization.optionsType = md.ProcessUnitOptions.NormalizationOptions
    normalization.options = md.NormalizationOptionsT()
    normalization.options.mean = [mean]
    normalization.options.std = [std]
    image.processUnits = [normalization]
    image.stats = md.StatsT()
    image.stats.min, image.stats.max = [0.0], [255.0]

    graph = md.SubGraphMetadataT()
    graph.inputTensorMetadata = [image]
    graph.outputTensorMetadata = list(outputs)
    if custom:
        graph.customMetadata = list(custom)
    model = md.ModelMetadataT()
    model.name = name
    model.description = description
    model.version = "1"
    model.author = "mnv3"
    model.subgraphMetadata = [graph]
    model.minParserVersion = "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"M001")  # the metadata file identifier
    return bytes(builder.Output())


def add_metadata(tflite: bytes, *, name: str, description: str, labels: list[str],
                 mean: float, std: float, output: md.TensorMetadataT | None = None,
                 outputs: dict[str, md.TensorMetadataT] | None = None,
                 custom: list = ()) -> bytes:
    """`tflite` with metadata inside and labels.txt appended as a zip (the TFLite
    metadata format: the model stays a valid flatbuffer and a valid zip).
    `output`: the one output tensor's metadata (classifier_output,
    segmenter_output); `outputs`: for a file with several, each one's by
    signature name (detector_outputs); `custom`: the subgraph's custom
    metadata entries."""
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(tflite, 0))
    in_order = [output] if outputs is None else _in_output_order(model, outputs)
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(_metadata(name, description, mean, std, in_order, custom),
                                np.uint8)
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()
                      and m.name != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(1024 * 1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
    return out.getvalue()


def _in_output_order(model, outputs: dict) -> list:
    """`outputs` ({signature name: metadata}) in the order of the graph's output
    tensors, which is how readers pair metadata with tensors."""
    signature = model.signatureDefs[0]
    index = {_text(o.name): o.tensorIndex for o in signature.outputs}
    by_tensor = {index[name]: meta for name, meta in outputs.items()}
    return [by_tensor[t] for t in model.subgraphs[0].outputs]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_metadata(tflite: bytes) -> md.ModelMetadataT:
    """The ModelMetadata of a .tflite (for tests and the report)."""
    model = tfl.Model.GetRootAsModel(tflite, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            return md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(data, 0))
    raise ValueError("no TFLite metadata")


def associated_files(tflite: bytes) -> dict[str, bytes]:
    """The files packed with a .tflite (labels.txt); none for a file without them."""
    try:
        with zipfile.ZipFile(io.BytesIO(tflite)) as archive:
            return {n: archive.read(n) for n in archive.namelist()}
    except zipfile.BadZipFile:  # converted elsewhere: a bare flatbuffer
        return {}
