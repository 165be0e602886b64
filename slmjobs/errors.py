"""The one error type a user can cause.

Anything raised as UsageError is printed by the CLI as a single line and exits with status 2,
after the launcher has made sure nothing was submitted and no run directory was left behind.
"""


class UsageError(Exception):
    """Bad input: the message names the bad value and what is allowed."""

    exit_code = 2
