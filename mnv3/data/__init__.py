"""Input data: sources (synthetic, folder, tfrecord, tfds), preprocessing, pipeline."""

from mnv3.data.labels import LABEL_RANGE_MESSAGE, MASK_RANGE_MESSAGE
from mnv3.data.pipeline import Pipeline, make_pipeline, user_errors_from_data

__all__ = ["LABEL_RANGE_MESSAGE", "MASK_RANGE_MESSAGE", "Pipeline", "make_pipeline",
           "user_errors_from_data"]
