"""Each step's time, printed at the end of a run of the image scripts, pass or fail."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("scripts.compose")


class Timer:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        log.info("-- %s", name)
        start = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - start))


def report_times(timer: Timer) -> None:
    print("\nsteps:")
    for name, seconds in timer.steps:
        print(f"  {name:60} {seconds:7.1f} s")
    print(f"  {'total':60} {sum(s for _, s in timer.steps):7.1f} s")


def timed_run(
    run: Callable[[Timer], None], passed: str, failures: tuple[type[Exception], ...]
) -> int:
    """``run`` with its steps timed: 0 and ``passed`` printed, or 1 on one of ``failures``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    timer = Timer()
    try:
        run(timer)
    except failures as error:
        log.error("FAILED: %s", error)
        report_times(timer)
        return 1
    report_times(timer)
    print(f"\n{passed}")
    return 0
