"""User-facing errors: the CLI prints them as one line and exits with code 2."""

import argparse


class UserError(Exception):
    """A problem with the user's input (config, data path, shapes) that the user can fix.

    The message must say what is wrong and what to do, in one line.
    """


def why_not_a_dir(path) -> str:
    """'is a file, not a folder' or 'does not exist': the reason a path given as a data folder cannot be used."""
    from pathlib import Path

    return "is a file, not a folder" if Path(path).exists() else "does not exist"


class ArgumentParser(argparse.ArgumentParser):
    """The one argument parser of the tlstm commands (and `tlstm bench`): a bad flag is a one-line UserError
    (exit 2) naming the command and its usage, not argparse's usage block and exit; no abbreviated flags."""

    def __init__(self, prog: str, **kwargs) -> None:
        super().__init__(prog=prog, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UserError(f"{self.prog}: {message}; use {usage}")
