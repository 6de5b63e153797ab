"""A role's local proof of life: a small file its own event loop refreshes every second,
which `berth check worker|scheduler --local` reads for a liveness probe.

The proof lives beside the process (in its container), so the probe needs neither Redis
nor another role: a Redis outage leaves it fresh, while a loop that stops turning (a
thread blocked, an event loop held by a bug, an engine that no longer answers) leaves it
to age. The refresh is one ``utime`` (the file is written whole, atomically, only when it
is missing), so it costs the loop nothing it would notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# how often a role refreshes its proof, and the age past which a probe counts it dead:
# far above a refresh, so a loop held up for a few seconds (a burst, a slow disk) is no
# restart; the probe's own period and failure threshold add to it
REFRESH_S = 1.0
MAX_AGE_S = 30.0


def proof_path(role: str, role_id: str, configured: str | None = None) -> Path:
    """Where a role's proof is: ``configured`` when set, else the temp directory's
    ``berth-<role>-<id>.alive`` (the probe finds it by the same id, BERTH_<ROLE>_ID)."""
    if configured:
        return Path(configured)
    safe_id = role_id.replace(os.sep, "_")
    return Path(tempfile.gettempdir()) / f"berth-{role}-{safe_id}.alive"


class LivenessFile:
    """The proof one process keeps fresh; ``refresh`` from the loop whose turning it proves."""

    def __init__(self, path: Path, role: str, role_id: str) -> None:
        self.path = path
        self._content = json.dumps({"role": role, "id": role_id, "pid": os.getpid()})
        self._failing = False

    def refresh(self) -> None:
        try:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self._write()
        except OSError as err:
            # the probe fails and restarts the process: say why before it does
            if not self._failing:
                log.error("cannot refresh the liveness file %s: %s", self.path, err)
            self._failing = True
        else:
            self._failing = False

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(self._content)
        os.replace(partial, self.path)

    def remove(self) -> None:
        """At a start (a proof left by an earlier process must not vouch for this one) and
        at a clean stop."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def keep_fresh(proof: LivenessFile, interval_s: float = REFRESH_S) -> None:
    """Refresh ``proof`` while the event loop running this task turns."""
    while True:
        proof.refresh()
        await asyncio.sleep(interval_s)


def age_s(path: Path) -> float | None:
    """Seconds since the proof was last refreshed; None when there is none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None
