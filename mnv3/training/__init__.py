"""The trainer (arrives with the trainer issue)."""

from mnv3.errors import UserError


def run(cfg, model_dir):
    raise UserError("training is not implemented yet")
