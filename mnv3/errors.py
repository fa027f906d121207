"""The one exception type that means "the user gave us something we can't use"."""


class UserError(Exception):
    """Bad input (config, data, path, checkpoint). The CLIs print its message as
    one line and exit with status 2, instead of a stack trace."""
