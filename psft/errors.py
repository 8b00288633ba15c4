"""User-facing errors: the CLI prints them as one line, without a traceback (`PSFT_DEBUG=1` shows it)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn


class UserError(ValueError):
    """Bad input or configuration that the user must fix; the message says what to change."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying one line on what was saved (the last complete checkpoint)."""


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd program


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` for the closest known name, or `""` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message (its type's name if it has none)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def run_command(name: str, command: Callable[[], int | None]) -> int:
    """Run one `psft` command: a user error prints `psft NAME: error: ...` and returns 2, Ctrl-C prints one
    line and returns 130, a file-system or model-loading `OSError` prints its first line and returns 1.
    Anything else is a bug and keeps its traceback. With `PSFT_DEBUG=1` nothing is caught."""
    if os.environ.get("PSFT_DEBUG"):
        return command() or 0
    # argparse would print the whole usage before its error: the commands' parsers raise a UserError instead
    error, argparse.ArgumentParser.error = argparse.ArgumentParser.error, _raise_user_error
    try:
        return command() or 0
    except UserError as err:
        print(f"psft {name}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        detail = first_line(err) if str(err) else "stopped by Ctrl-C"
        # in a terminal Ctrl-C lands mid-line (after ^C or a progress bar): start the line afresh there
        start = "\n" if sys.stderr.isatty() else ""
        print(f"{start}psft {name}: interrupted: {detail}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except OSError as err:  # disk full, permissions, a model the hub or the disk does not have
        print(f"psft {name}: error: {first_line(err)}", file=sys.stderr)
        return 1
    finally:
        argparse.ArgumentParser.error = error


def _raise_user_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):  # name the closest option, as `psft train` does
        name = message[len(prefix) :].split()[0].split("=")[0]
        message += did_you_mean(name, [o for action in self._actions for o in action.option_strings])
    raise UserError(message)
