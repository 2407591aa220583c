"""A one-line progress bar on stderr for long loads (no dependency)."""

import sys
import time


class ProgressBar:
    """A one-line byte counter on stderr: bar, GB done / total, MB/s."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.last = total, 0, time.perf_counter(), 0.0

    def update(self, nbytes: int) -> None:
        self.done, now = self.done + nbytes, time.perf_counter()
        if now - self.last < 0.1 and self.done < self.total:
            return  # redraw at most 10 times a second
        self.last, filled = now, int(30 * self.done / max(self.total, 1))
        bar, rate = "#" * filled + "." * (30 - filled), self.done / max(now - self.start, 1e-9) / 1e6
        sys.stderr.write(f"\rloading weights [{bar}] {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB {rate:.0f} MB/s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()
