"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, data path, shapes) that the user can fix.

    The message must say what is wrong and what to do, in one line.
    """
