"""Errors raised for bad user input.

Every problem with a file, a field or an option raises :class:`JaxedInputError` with a one-line message that
names the file/line/field and what was expected; the command line prints it and exits with status 2.
"""


class JaxedInputError(ValueError):
    """Bad input from the user: a file, a field or an option. The message is one line, for humans."""
