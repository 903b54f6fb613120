"""Peak resident memory of this process over a block: what loading, exporting or pruning a model costs."""

from __future__ import annotations

import threading


class PeakRSS:
    """Samples this process's resident set size in a thread; ``start_mb`` and ``peak_mb`` after the block.

    The kernel's own high-water mark (``ru_maxrss``) never goes down, so it cannot measure one block of a
    process that did something bigger before; sampling can (at the cost of missing spikes shorter than
    ``interval_s``).
    """

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._proc, self._interval = psutil.Process(), interval_s
        self._stop = threading.Event()
        self.start_mb = self.peak_mb = 0.0

    def _rss_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())
