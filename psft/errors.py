"""User-facing errors: the CLI prints them as one line, without a traceback (`PSFT_DEBUG=1` shows it).

`run_command` is the one place that turns an exception into what the user sees; the parsers of `psft.cli.args` raise
`UserError` for their mistakes, so no argparse usage dump or `SystemExit(2)` reaches the user.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Callable, Iterable


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
    """Run one `psft` command, the one place that turns exceptions into what the user sees:

    - `UserError` (bad input: a parser's mistake via `psft.cli.args`, a config, a data file): `psft NAME: error: ...`
      on one line of stderr, exit code 2;
    - Ctrl-C: one line (what was saved), exit code 130;
    - `OSError` (disk full, permissions, a model the disk or the hub does not have): its first line, exit code 1;
    - anything else is not a mistake psft recognises (likely a bug): its traceback, then one line asking to
      report it, exit code 1.

    With `PSFT_DEBUG=1` nothing is caught: every exception propagates with its traceback."""
    if os.environ.get("PSFT_DEBUG"):
        return command() or 0
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
    except Exception as err:  # not a mistake psft recognised: show where, and ask for a report
        traceback.print_exc()
        print(
            f"psft {name}: unexpected error ({type(err).__name__}): psft did not expect this, so it is likely a "
            "bug; please report it with the command you ran and the traceback above",
            file=sys.stderr,
        )
        return 1
