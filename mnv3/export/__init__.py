"""TFLite export (arrives with the export issue)."""

from mnv3.errors import UserError


def run(cfg, model_dir):
    raise UserError("TFLite export is not implemented yet")
