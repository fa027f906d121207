"""The one exception type that means "the user gave us something we can't use"."""


class UserError(Exception):
    """Bad input (config, data, path, checkpoint). The CLIs print its message as
    one line and exit with status 2, instead of a stack trace."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first line, for a one-line message (its type when empty)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
