"""What every command of the package does at its edges."""

from __future__ import annotations

import functools
import os
import sys

# 128 + SIGPIPE: what a shell reports for a Unix tool whose reader left.
EXIT_BROKEN_PIPE = 141


def command(main):
    """Wraps a command's ``main``: when the reader of its output stops
    reading (``resnext-summary --list | head -1``), it exits quietly with
    `EXIT_BROKEN_PIPE`, as Unix tools do, instead of a
    ``BrokenPipeError`` traceback."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            # Python flushes stdout again at exit: point it at /dev/null so
            # that flush does not raise (and print) a second time.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
    return run
