"""Progress display: tqdm bars on a terminal, a few plain lines elsewhere.

A bar redrawn into a log file or a pipe is one line per redraw (one demo
wrote 3,153 of them); when standard error is not a terminal, progress is a
line when a stage starts, one every `step` of the total and one when it
ends.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from types import TracebackType
from typing import IO, Any


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True, step: float = 0.25) -> Any:
    """A tqdm bar when `enabled` and standard error is a terminal, a
    :class:`LineProgress` when `enabled` and it is not, else a silent
    stand-in; all three take update(), set_postfix_str(), close(), `with`
    and iteration."""
    if enabled and _is_terminal(sys.stderr):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, step=step)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def write(line: str) -> None:
    """Print a line on standard error without breaking a bar on screen."""
    if _is_terminal(sys.stderr):
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


class LineProgress:
    """Progress as whole lines on standard error: "DESC: started (TOTAL
    UNIT)", "DESC: 50% (N/TOTAL UNIT, S s)" at each `step` of the total, and
    "DESC: done (N UNIT in S s)"."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, step: float = 0.25) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and isinstance(iterable, Sized):
            total = len(iterable)
        self.total, self.desc, self.unit, self.enabled, self.step = total, desc, unit, enabled, step
        self.n: float = 0
        self._next, self._start, self._closed = step, time.perf_counter(), False
        self._write(f"started ({total} {unit})" if total else "started")

    def _write(self, text: str) -> None:
        if self.enabled:
            print(f"{self.desc}: {text}", file=sys.stderr, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.total:
            while self._next < 1.0 and self.n >= self._next * self.total:
                self._write(f"{self._next:.0%} ({self.n}/{self.total} {self.unit}, "
                            f"{time.perf_counter() - self._start:.1f} s)")
                self._next += self.step

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """Shown by tqdm only: a line per postfix would be the flood this
        class exists to avoid."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(f"done ({self.n} {self.unit} in {time.perf_counter() - self._start:.1f} s)")

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("a LineProgress made without an iterable is updated by hand, not iterated")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None and not self._closed:
            self._closed = True
            self._write(f"stopped at {self.n} {self.unit} ({kind.__name__})")
        self.close()
