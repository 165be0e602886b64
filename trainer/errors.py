"""The worker's one error type for bad input (the launcher has its own). Entry points print it
as one line and exit with status 2, before touching any checkpoint or dataset. The exit
statuses are the chain's contract, the same for any command (slmjobs.link)."""

from slmjobs import link

EXIT_FINISHED = link.FINISHED
EXIT_BAD_INPUT = link.BAD_INPUT
EXIT_DISK_FULL = 74   # EX_IOERR: a checkpoint could not be saved for lack of space or quota
EXIT_HANDED_OFF = link.HANDED_OFF  # EX_TEMPFAIL: stopped early with a checkpoint, more to do


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
