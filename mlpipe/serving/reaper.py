"""The process-group watchdog behind :mod:`mlpipe.serving.lifecycle` (run as a script, stdlib only).

``mlpipe-serve`` starts this file with ``python -I reaper.py`` in a session of its own and keeps
its stdin open. Over that pipe it registers what must not outlive it::

    group <pgid>     a process group to SIGKILL (tritonserver + its python stubs, nginx)
    release <pgid>   that group was stopped cleanly: forget it
    file <path>      a file to remove (a /dev/shm region of the python backend), or an empty
                     folder (the gateway's unix sockets' folder, registered with its sockets)
    forget <path>    that file was removed already

When the pipe closes (its parent exited, however: SIGKILL included, since the kernel closes the
descriptors of a dead process) it kills every registered group, removes every registered file
and exits. PR_SET_PDEATHSIG alone cannot do this: the python stubs are grandchildren, and shared
memory regions are files that outlive every process.
"""

from __future__ import annotations

import os
import signal
import sys


def _apply(line: str, groups: set[int], files: set[str]) -> None:
    verb, _, arg = line.strip().partition(" ")
    if verb == "group":
        groups.add(int(arg))
    elif verb == "release":
        groups.discard(int(arg))
    elif verb == "file":
        files.add(arg)
    elif verb == "forget":
        files.discard(arg)


def _reap(groups: set[int], files: set[str]) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for path in sorted(files, key=len, reverse=True):  # a folder after the files in it
        try:
            if os.path.isdir(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:  # a folder something else has put a file in: left alone
            pass


def main() -> None:
    # Only the closing pipe ends this process: Ctrl-C in the terminal or a SIGTERM meant for
    # mlpipe-serve must not take the watchdog down before it has cleaned up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    files: set[str] = set()
    for line in sys.stdin:
        _apply(line, groups, files)
    _reap(groups, files)


if __name__ == "__main__":
    main()
