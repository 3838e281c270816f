"""The one exception type that reaches the user as a single line and exit code 2."""


class CompError(Exception):
    """Bad input or a refused action. The message names the file and the fix.

    The CLI prints it as one line (no traceback) and exits with status 2.
    """
