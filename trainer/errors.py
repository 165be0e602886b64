"""The worker's one error type for bad input (the launcher has its own; the two never import
each other). Entry points print it as one line and exit with status 2, before touching any
checkpoint or dataset."""

EXIT_FINISHED = 0
EXIT_BAD_INPUT = 2
EXIT_DISK_FULL = 74   # EX_IOERR: a checkpoint could not be saved for lack of space or quota
EXIT_HANDED_OFF = 75  # EX_TEMPFAIL: stopped early with a checkpoint, more to do


class BadInput(Exception):
    """The message names the bad value and what is allowed."""

    exit_code = EXIT_BAD_INPUT


def one_line_parser(**kwargs):
    """argparse whose errors are BadInput (one line, exit 2) instead of usage text plus a line."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise BadInput(message)

    return Parser(**kwargs)
