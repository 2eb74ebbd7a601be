"""Writing off the critical path: one background thread that runs a job's writing work (files, manifest rows,
preview grids) in the order it was handed over, while the caller goes on with the next batch.

One thread keeps the order (a batch's rows are recorded after its files exist, batches one after the other), so the
outputs are exactly those of writing in line. At most ``depth`` tasks wait or run at a time: a caller that decodes
faster than the disk writes waits there, so memory stays bounded. A failed task fails the job at the next
:meth:`BackgroundWriter.submit` or at :meth:`BackgroundWriter.finish`, with its own error.

Example::

    with BackgroundWriter() as output:
        for batch in batches:
            decoded = decode(batch)             # the device works on the next batch ...
            output.submit(write, decoded)       # ... while this one is written
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from medcf.runtime.settings import require_integer


class BackgroundWriter:
    """Run writing tasks in one background thread, in order, at most ``depth`` at a time.

    Args:
        depth: how many submitted tasks may wait or run before :meth:`submit` blocks (at least 1).
        background: False runs each task at once in the caller's thread (the same outputs, in the same order).
            On a CPU-only machine the network's threads already use every core and a writer thread only competes
            with them (measured: no gain on 2 cores), so the inference job writes in the background only when the
            network runs on a GPU.

    Raises:
        ValueError: ``depth`` is not an integer >= 1.
    """

    def __init__(self, depth: int = 2, background: bool = True) -> None:
        require_integer("depth", depth, 1)
        self.depth, self.background = depth, background
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medcf-writer") if background else None
        self._pending: deque[Future] = deque()

    def submit(self, task: Callable[..., Any], *args: Any) -> None:
        """Hand ``task(*args)`` to the background thread, after the tasks handed over before it.

        Args:
            task: the writing work.
            args: its arguments (the caller must not change them afterwards).

        Raises:
            Exception: the error of an earlier task that failed.
        """
        if self._executor is None:
            task(*args)
            return
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.depth):
            self._pending.popleft().result()
        self._pending.append(self._executor.submit(task, *args))

    def finish(self) -> None:
        """Wait for every task handed over, then stop the thread.

        Raises:
            Exception: the error of the first task that failed (the tasks after it still ran).
        """
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Finish; on the way out of an error, still let the tasks handed over complete (their files and rows are
        kept, as when writing in line) and keep the caller's error rather than theirs."""
        if kind is None:
            self.finish()
            return
        for future in self._pending:
            future.exception()  # waits; a second failure would hide the first one
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
