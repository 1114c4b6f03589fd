"""Child processes that never outlive mlpipe-serve, and leave nothing behind.

Two layers, because each covers what the other cannot:

* :func:`die_with_parent` is a ``preexec_fn`` that sets ``PR_SET_PDEATHSIG``: the kernel sends
  the child SIGKILL the moment the thread that started it is gone (SIGKILL of mlpipe-serve
  included). It reaches direct children only.
* :class:`Reaper` is a process-group watchdog (:mod:`mlpipe.serving.reaper`) in a session of its
  own: mlpipe-serve registers every process group (tritonserver + python stubs, nginx) and every
  /dev/shm region; when mlpipe-serve dies the watchdog's stdin closes and it kills the groups
  and removes the regions. The reaper is watched in turn: :meth:`Reaper.shared` replaces a dead
  one and registers everything again (mlpipe-serve's watchdog loop calls it every check), so a
  killed reaper cannot leave nginx workers (which PR_SET_PDEATHSIG does not reach) holding the
  gateway's ports after mlpipe-serve dies too.
* Every child is started with umask 077: files it creates (the python backend's /dev/shm regions,
  which hold request tensors) are its user's alone.

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so servers are started
from the thread that lives as long as they do (mlpipe-serve's main thread; a test's thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SHM_DIR = Path("/dev/shm")


#: Files a child creates are its user's alone (request data lands in /dev/shm).
CHILD_UMASK = 0o077


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``signum`` when its parent dies (Linux only), and
    creates files with umask 077."""
    parent = os.getpid()

    def _preexec() -> None:
        os.umask(CHILD_UMASK)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            os._exit(127)  # cannot promise to die with the parent: do not start at all
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(127)

    return _preexec


def describe_exit(returncode: int | None) -> str:
    """``exit code 1`` / ``killed by SIGSEGV`` / ``still running``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc; empty once it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if Path(f"/proc/{current}").exists():
            tree.append(current)
            todo.extend(children.get(current, []))
    return tree


def shm_regions(pids: Iterable[int]) -> set[Path]:
    """The /dev/shm files these processes have mapped (the python backend's regions)."""
    found: set[Path] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5] if len(fields) == 6 else ""
            if path.startswith(f"{SHM_DIR}/"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


def remove_files(paths: Iterable[Path]) -> list[Path]:
    """Unlink each path that still exists; returns those removed."""
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


class Reaper:
    """The client side of the process-group watchdog: one per mlpipe process, started lazily."""

    _shared: Reaper | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        script = Path(__file__).with_name("reaper.py")
        self._lock = threading.Lock()
        self.groups: set[int] = set()  # what is registered, replayed to a replacement
        self.files: set[str] = set()
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C and killpg of our group must not reach it
            text=True,
        )

    @classmethod
    def shared(cls) -> Reaper:
        """This process's watchdog (replaced, with every registration, if it died)."""
        with cls._shared_lock:
            old = cls._shared
            if old is None or old.process.poll() is not None:
                cls._shared = cls()
                if old is not None:
                    log.warning("the process-group watchdog died; replaced it")
                    with contextlib.suppress(OSError):  # its end of the pipe is gone
                        old.process.stdin.close()
                    for pgid in sorted(old.groups):
                        cls._shared.watch_group(pgid)
                    cls._shared.watch_files(Path(f) for f in sorted(old.files))
            return cls._shared

    def _send(self, verb: str, arg: object) -> None:
        with self._lock:
            if verb in ("group", "release"):
                (self.groups.add if verb == "group" else self.groups.discard)(int(arg))
            else:
                (self.files.add if verb == "file" else self.files.discard)(str(arg))
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(f"{verb} {arg}\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):
                log.warning("the process-group watchdog is gone; %s %s not registered", verb, arg)

    def watch_group(self, pgid: int) -> None:
        self._send("group", pgid)

    def release_group(self, pgid: int) -> None:
        self._send("release", pgid)

    def watch_files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._send("file", path)

    def forget_files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._send("forget", path)
