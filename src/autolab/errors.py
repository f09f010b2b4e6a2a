"""Errors a user can cause and fix. Each message is one line that says what to do."""


class UserError(Exception):
    """Bad input or setup: reported as one line, never as a traceback."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line of text (or its type's name): what a one-line error quotes of it."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__


class DivergenceError(Exception):
    """The training loss became NaN or exploded; the run ends with status `crash`."""
