"""One run per output_dir: a lock file naming its holder (host, pid, start), taken when training starts and
released at its end; a stale lock (its process gone) is taken over."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from typing import Any

from transformers.utils import logging

from psft.errors import UserError

logger = logging.get_logger(__name__)

LOCK_FILE = "psft.lock"


# ---------------------------------------------------------------------------------------------------- lock
def acquire_lock(run_dir: str) -> str:
    """Claim `run_dir` for this run (`psft.lock`, holding this process's pid and host), or refuse with one line
    when another live run holds it. A lock whose process is gone (a crash, a SIGKILL) on this host is stale and
    taken over; one from another host cannot be checked and is refused with how to clear it. Returns the path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):  # another process may take over a stale lock between our checks
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None and _age(path) > 30:  # left empty by a process that died while taking it
                holder = {"pid": -1, "host": socket.gethostname()}
            if holder is None or _alive(holder):
                who = "a run being set up" if holder is None else f"pid {holder['pid']} on {holder['host']}"
                raise UserError(
                    f"output_dir {run_dir} is in use by another run ({who}, {path}): wait for it to finish or use "
                    f"another output_dir (delete {path} if that run is gone)"
                ) from None
            logger.warning(f"{path}: taking over the lock of pid {holder['pid']}, which no longer runs")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise UserError(f"output_dir {run_dir}: could not take {path}; another run is starting there")


def release_lock(path: str) -> None:
    """Remove the lock if it is still this process's."""
    holder = _lock_holder(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _lock_holder(path: str) -> dict[str, Any] | None:
    """The lock's {pid, host}; None while it is being written (empty) or unreadable."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except FileNotFoundError:
        return {"pid": -1, "host": socket.gethostname()}  # removed meanwhile: stale, retry
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder and "host" in holder else None


def _age(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return math.inf


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's process runs (always assumed for another host, which cannot be checked)."""
    if holder["host"] != socket.gethostname():
        return True
    pid = int(holder["pid"])
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
