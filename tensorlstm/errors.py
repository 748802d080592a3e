"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, data path, shapes) that the user can fix.

    The message must say what is wrong and what to do, in one line.
    """


def why_not_a_dir(path) -> str:
    """'is a file, not a folder' or 'does not exist': the reason a path given as a data folder cannot be used."""
    from pathlib import Path

    return "is a file, not a folder" if Path(path).exists() else "does not exist"
