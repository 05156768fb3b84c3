"""Telling the caller's mistakes from failures of the work.

The CLI exits 2 with a usage line for a bad argument found before any work
(a misspelt model, a missing folder), and otherwise names the failure of
the run (a full disk, a read-only folder) with its own exit code. The API
raises the same exceptions either way; the checks that run before any work
are wrapped in :func:`checking_inputs`, which marks what they raise.
"""
from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

_MARK = "_ped_fast_input_error"


@contextlib.contextmanager
def checking_inputs() -> Iterator[None]:
    """Mark every exception raised in the block as the caller's input
    mistake (the exception itself, its type and message are unchanged)."""
    try:
        yield
    except (ValueError, TypeError, OSError, LookupError) as error:
        setattr(error, _MARK, True)
        raise


def is_input_error(error: BaseException) -> bool:
    """Whether `error` was raised by a check of the caller's input, before
    any work."""
    return bool(getattr(error, _MARK, False))


def describe(error: BaseException) -> str:
    """One line for an error row: the exception's type and message."""
    text = str(error).strip() or repr(error)
    return f"{type(error).__name__}: {text}"


# errno values of failures that a retry on the same or another machine may
# cure: an interrupted or timed-out network file system, a busy resource.
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ESTALE, errno.EINTR}


def is_transient(error: BaseException) -> bool:
    """Whether `error` may not happen again on a retry: memory another
    process held (CUDA or host out of memory), a lost connection, a timed
    out or stale network file. Not a bad input, a missing file or a full
    disk, which a retry would only repeat."""
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError, ConnectionError, TimeoutError)):
        return True
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS
