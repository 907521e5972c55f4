"""Failpoints: named places where a test may make a process die, like `kill -9`, exactly
there. Crash tests use them to stop a service at a precise boundary (between a saga's
step and its record, between a wallet commit and its reply) and then check that recovery
finishes the work once.

Off unless `INTERPAY_FAILPOINTS_DIR` names a folder; the local test mesh sets it, nothing
else should. A test arms a failpoint by creating a file named after it in that folder;
the first process to reach the point removes the file (so it fires once) and SIGKILLs
itself: no cleanup, no flushed buffers, no graceful drain. Every name a process passes
is also logged at debug level, so a test can list the boundaries of a flow.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("interpay.failpoints")
_DIR = Path(os.environ["INTERPAY_FAILPOINTS_DIR"]) if os.environ.get("INTERPAY_FAILPOINTS_DIR") else None


def enabled() -> bool:
    return _DIR is not None


def hit(name: str) -> None:
    """Dies here if a test armed `name`; otherwise does nothing."""
    if _DIR is None:
        return
    armed = _DIR / name
    try:
        armed.unlink()  # whoever unlinks it fires it: exactly once
    except FileNotFoundError:
        return
    log.warning("failpoint fired: SIGKILL", extra={"failpoint": name})
    os.kill(os.getpid(), signal.SIGKILL)
