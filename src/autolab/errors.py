"""Errors a user can cause and fix. Each message is one line that says what to do."""


class UserError(Exception):
    """Bad input or setup: reported as one line, never as a traceback."""


class DivergenceError(Exception):
    """The training loss became NaN or exploded; the run ends with status `crash`."""
