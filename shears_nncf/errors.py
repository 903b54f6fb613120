"""One exception type for every mistake a user can fix: the CLI prints it as one line and exits 2."""


class ShearsError(Exception):
    """Bad input (config, path, option value); the message names the problem and the fix."""
