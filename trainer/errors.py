"""The worker's exit statuses, its one error type for bad input (the launcher has its own) and
the one for a diverged run. Entry points print BadInput as one line and exit with status 2,
before touching any checkpoint or dataset. The statuses 0, 2 and 75 are the chain's contract,
the same for any command (slmjobs.link, the one module of slmjobs the worker imports)."""

from slmjobs import link

EXIT_FINISHED = link.FINISHED
EXIT_BAD_INPUT = link.BAD_INPUT
EXIT_DIVERGED = 65    # EX_DATAERR: the loss or the weights became NaN/inf; nothing saved after it
EXIT_CANT_CREATE = 73  # EX_CANTCREAT: an output on a read-only filesystem or without permission
EXIT_DISK_FULL = 74   # EX_IOERR: an output could not be written for lack of space or quota
EXIT_HANDED_OFF = link.HANDED_OFF  # EX_TEMPFAIL: stopped early with a checkpoint, more to do


class BadInput(Exception):
    """The message names the bad value and what is allowed."""

    exit_code = EXIT_BAD_INPUT


class Diverged(Exception):
    """Training stopped at the step whose loss or weights became non-finite, before any save.
    The message is the one line the worker prints (after `error: `)."""

    exit_code = EXIT_DIVERGED


def one_line_parser(**kwargs):
    """argparse whose errors are BadInput (one line, exit 2) instead of usage text plus a line."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise BadInput(message)

    return Parser(**kwargs)
