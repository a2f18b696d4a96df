"""What every console script (``mmnsim``, ``mmnsim-report``, ...) does with odd output and a user who leaves.

* Output to a closed pipe (``mmnsim-report DIR | head -1``) ends the command quietly with exit status 1, as
  Python's documentation advises (signal module, "Note on SIGPIPE"): stdout is pointed at /dev/null so that
  the interpreter's own flush at exit raises nothing either.
* Output in a locale that is not UTF-8: what its encoding lacks is printed escaped (``\\xfc``), not an error.
* A command-line error (``ArgumentParser``, for every console script's own options) is one line naming the
  option and what it accepts, exit status 2, instead of argparse's usage block.
* Ctrl-C (SIGINT), and SIGTERM, are one line, ``PROG: interrupted (SIGINT)``, exit status 128 + the
  signal's number (as a shell reports it), not a traceback; SIGTERM is raised as ``Terminated`` where the
  command is, so that it unwinds as Ctrl-C does and removes its temporary files. A command that knows more
  (``mmnsim``: which run or sweep, how many jobs finished, what to run again) adds it to that line
  (``console_script(..., interrupted=...)``). What was written stays whole: every output file is written
  under a temporary name and renamed into place.
"""

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(BaseException):
    """SIGTERM, raised where the process is (``on_sigterm``), so that it unwinds as Ctrl-C does."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def on_sigterm() -> None:
    """From now on, SIGTERM raises ``Terminated`` in this process's main thread (from the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)


def interrupted_signal(exc: BaseException) -> signal.Signals:
    """The signal behind a KeyboardInterrupt (SIGINT) or a Terminated."""
    return signal.Signals(exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


def interrupted_line(prog: str, exc: BaseException, detail: str = "") -> str:
    """The one line an interrupted command prints: ``PROG: interrupted (SIGINT)``, then ``: DETAIL`` if given."""
    return f"{prog}: interrupted ({interrupted_signal(exc).name})" + (f": {detail}" if detail else "")


def console_script(prog: str, interrupted: Callable[[], str] | None = None) -> Callable[[F], F]:
    """Decorate a console script's ``main`` with the handling above. ``interrupted()``, if given, says what
    was interrupted and what to run again, for the line Ctrl-C and SIGTERM print."""

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            printable_stdout()
            logging.raiseExceptions = False  # a log line to a closed pipe or a full disk: no traceback per line
            previous = signal.getsignal(signal.SIGTERM)
            on_sigterm()
            try:
                result = main(*args, **kwargs)
                sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
                return result
            except BrokenPipeError:
                quiet_stdout()
                sys.exit(1)
            except (KeyboardInterrupt, Terminated) as exc:
                print(interrupted_line(prog, exc, interrupted() if interrupted is not None else ""), file=sys.stderr)
                sys.exit(128 + interrupted_signal(exc))
            finally:  # called in a process that goes on (a test, a script): its handler back
                signal.signal(signal.SIGTERM, previous)

        return run  # type: ignore[return-value]

    return wrap


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line: ``PROG: MESSAGE (PROG --help lists the options)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message} ({self.prog} --help lists the options)", file=sys.stderr)
        sys.exit(2)


def printable_stdout() -> None:
    """Under a locale whose encoding is not UTF-8 (``LANG=C`` without Python's UTF-8 mode, latin-1), text
    the encoding lacks (a directory's name, ``±``) is printed escaped instead of raising."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.reconfigure(errors="backslashreplace")


def quiet_stdout() -> None:
    """Point stdout at /dev/null (after its reader went away), so that nothing more raises on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (a test's capture): nothing to silence
        pass
    finally:
        os.close(devnull)
