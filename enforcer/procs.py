"""Whether a process still runs, as the supervisor, the agents' records and the collector's runs ask it."""

from __future__ import annotations

import os


def pid_running(pid: int) -> bool:
    """`pid` exists and is not a zombie (a killed child its parent has not reaped yet: started
    detached, its parent may be a subreaper that reaps late)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it exists
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc to tell a zombie by: kill(0) said it exists
