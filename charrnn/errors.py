"""Errors the user can fix. The CLI prints the message as one line and exits 1."""


class CharrnnError(Exception):
    """A known problem with the user's input: say what went wrong and what to do about it."""
