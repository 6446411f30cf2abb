"""Ctrl-C that is never lost, even inside library code that swallows it.

A KeyboardInterrupt raised while a ``__del__`` runs (the garbage collector runs them at any
allocation, e.g. in the middle of a model load) is only printed as "Exception ignored in …
__del__" and the program goes on; a run interrupted during its model load then rendered
everything and exited 0. `interrupts_kept` remembers every SIGINT and raises KeyboardInterrupt
when its block ends if the first one was swallowed.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def interrupts_kept() -> Iterator[None]:
    """Ctrl-C during the block is never lost: raised as usual, and raised again when the
    block ends if something swallowed it (a KeyboardInterrupt inside a ``__del__`` during a
    model load is only printed as "Exception ignored", and the load would go on).

    Main thread only (signals are delivered there); elsewhere the block runs as it is.
    """
    previous = signal.getsignal(signal.SIGINT)
    elsewhere = threading.current_thread() is not threading.main_thread()
    if elsewhere or previous is None or previous == signal.SIG_IGN:  # None: not Python's
        yield
        return
    hits: list[int] = []
    old_hook = sys.unraisablehook

    def on_sigint(signum: int, frame: Any) -> None:
        hits.append(signum)
        if callable(previous):
            previous(signum, frame)  # the default handler raises KeyboardInterrupt
        raise KeyboardInterrupt

    def unraisable(info: Any) -> None:  # a swallowed interrupt: recorded, not printed
        if isinstance(info.exc_value, KeyboardInterrupt):
            hits.append(signal.SIGINT)
            return
        old_hook(info)

    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = unraisable
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if hits:  # a library turned the interrupt into an error of its own
            raise KeyboardInterrupt from exc
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = old_hook
    if hits:
        raise KeyboardInterrupt
