"""Keep the JVM's fault handlers when Ray starts or stops in the same process.

The JVM (Lucene) traps SIGSEGV, SIGBUS and SIGFPE on purpose: implicit null checks and safepoint
polls in compiled Java code are memory faults that its handler turns into exceptions. ``ray.init``
installs its own handlers for those signals (faulthandler, or its C++ failure handler) and
``ray.shutdown`` resets them to the default, after which the next such trap kills the process
("segfault at 8" in JIT code). Ray workers are unaffected (their JVM starts after Ray). A driver that
also holds a JVM (a test process, a notebook) wraps Ray's start and stop in :func:`kept_fault_handlers`.
"""
from __future__ import annotations

import ctypes
import signal
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE)
_SIGACTION_BYTES = 512  # larger than any libc's struct sigaction; copied as opaque bytes


@contextmanager
def kept_fault_handlers() -> Iterator[None]:
    """Restore the process's fault-signal dispositions (byte for byte) after the block."""
    libc = ctypes.CDLL(None, use_errno=True)
    saved = {}
    for sig in _SIGNALS:
        buf = ctypes.create_string_buffer(_SIGACTION_BYTES)
        if libc.sigaction(int(sig), None, buf) == 0:
            saved[sig] = buf
    try:
        yield
    finally:
        for sig, buf in saved.items():
            libc.sigaction(int(sig), buf, None)
