"""A process started by `berth up` stops when `berth up` is gone, even after a SIGKILL.

`berth up` names itself in BERTH_PARENT_PID when it starts a role. The role then
(1) asks Linux to send it SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), and
(2) runs a watchdog thread that notices the same on any OS by polling getppid().
Either way the role gets SIGTERM and shuts down as on Ctrl-C; if it has not exited after a
grace period the watchdog kills its process group, which holds its children (vLLM's
engine process).

The embedded Valkey must outlive the roles a little, or their clean stop would spend its
time retrying a server that is gone. So `berth up` runs it under a keeper
(`python -m berth.plumbing.lifeline -- CMD...`) and writes each role's pid to the keeper's stdin.
End of input means `berth up` is gone (the kernel closes the pipe of a killed process):
the keeper waits for those roles to exit, then stops the server with SIGINT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

PARENT_PID_ENV = "BERTH_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.5
# a clean stop drains running requests; beyond this the role and its children are killed
GRACE_S = 30.0


def set_parent_death_signal(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when the thread that forked it
    exits (Linux only; elsewhere a no-op that returns False). Safe after fork and exec."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return bool(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process this one starts and that must not outlive it."""
    return dict(env, **{PARENT_PID_ENV: str(os.getpid())})


def watch_parent(grace_s: float = GRACE_S) -> bool:
    """If started by `berth up`, stop when it is gone; returns whether watching."""
    raw = os.environ.pop(PARENT_PID_ENV, None)  # not inherited by our own children
    if not raw:
        return False
    parent = int(raw)
    # armed only if the parent was still there once the signal was set: a parent that died
    # before that sends nothing, and the watchdog sends the SIGTERM itself
    armed = set_parent_death_signal(signal.SIGTERM) and os.getppid() == parent
    threading.Thread(
        target=_watch, args=(parent, grace_s, not armed), name="parent-watch", daemon=True
    ).start()
    return True


def _watch(parent: int, grace_s: float, send_term: bool) -> None:
    # re-parented (to init or a subreaper) once the parent is gone
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    log.warning("berth up (pid %d) is gone; stopping", parent)
    if send_term:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    log.error("did not stop within %.0f s of berth up going; killing", grace_s)
    if os.getpgrp() == os.getpid():
        # our own process group (berth up starts each role in a session of its own): the
        # role's children go with it
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def keep(command: list[str], grace_s: float = GRACE_S + 10) -> int:
    """Run ``command`` until stdin ends, then until the pids read from it have exited (at
    most ``grace_s``), then stop it with SIGINT. A SIGINT to the keeper's process group
    (`berth up` stopping normally) reaches the command directly; the keeper waits for it."""
    # a handler, not SIG_IGN: an ignored signal stays ignored in the child across exec
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    child = subprocess.Popen(command)
    watched: list[int] = []
    reader = threading.Thread(target=_read_pids, args=(watched,), daemon=True)
    reader.start()
    while child.poll() is None and reader.is_alive():
        time.sleep(_POLL_S)
    if child.poll() is None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_pid_alive(pid) for pid in watched):
            time.sleep(_POLL_S)
        child.send_signal(signal.SIGINT)
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def _read_pids(into: list[int]) -> None:
    for line in sys.stdin:
        if line.strip().isdigit():
            into.append(int(line))


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(keep(args[1:] if args[:1] == ["--"] else args))
