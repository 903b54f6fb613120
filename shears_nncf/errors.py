"""One exception type for every mistake a user can fix: the CLI prints it as one line and exits 2."""


class ShearsError(Exception):
    """Bad input (config, path, option value); the message names the problem and the fix."""


def first_line(e: BaseException, fallback: str = "") -> str:
    """The first line of an exception's message (library errors run to pages), else ``fallback`` or its type."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else fallback or type(e).__name__
