"""Deterministic 429s from the emulator, however fast or slow the machine is."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from pipeline.genai.emulator import Emulator


@contextlib.contextmanager
def throttled_at_first(emu: Emulator, refusals: int = 3) -> Iterator[None]:
    """One request a minute until the emulator has refused ``refusals`` requests with a
    429, then no limit: the first requests of what runs inside meet 429s and retry them."""
    emu.configure(rpm=1)
    stop = threading.Event()

    def lift() -> None:
        while not stop.wait(0.02):
            if emu.stats()["throttled"] >= refusals:
                emu.configure(rpm=None)
                return

    lifter = threading.Thread(target=lift, name="lift-rpm", daemon=True)
    lifter.start()
    try:
        yield
    finally:
        stop.set()
        lifter.join()
