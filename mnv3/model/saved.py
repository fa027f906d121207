"""Loading a saved `.keras` model, with damage reported as one line."""

from __future__ import annotations

import zipfile

from mnv3.errors import UserError, first_line
# A quantization-aware model's layers are mnv3's: registered for loading on import.
from mnv3.model import quantize_aware  # noqa: F401


def load_keras_file(path: str, damaged: str):
    """The model in `path`; `damaged` is the error line for a file that is not a
    loadable .keras archive (the loader's own reason is appended)."""
    import keras

    if not zipfile.is_zipfile(path):  # a .keras file is a zip archive
        raise UserError(damaged)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # corrupt or foreign files raise many types
        raise UserError(f"{damaged} ({first_line(e)})") from None
