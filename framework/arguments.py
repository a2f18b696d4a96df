"""Checking what plugins pass to the operations, before anything runs.

Every public operation a plugin can call (an mm's operations, the host's and the simulation's services, a
secondary MMU's helpers) takes its page, frame, node and range arguments through these functions: an
argument of the wrong type, a NaN, a number that does not fit, a page or frame outside the mm or the
host, raises ``OperationError`` naming the operation, the argument and what is accepted, before the
operation changes anything. Compiled kernels index host memory without bounds checks, so they are only
ever called with arguments checked here. Called from a hook, the error becomes a ``PluginError`` naming
the plugin and the hook (``notifier.plugin_error``). Each array check is one pass over the batch.
"""

import math
import numbers
from typing import Any

import numpy as np

from .kernel import U, kernel
from .pagetable import is_frozen

INT64_MAX = (1 << 63) - 1


class OperationError(ValueError):
    """An operation was called with an argument it does not accept; the message names the operation, the
    argument and what is accepted. Nothing was changed."""


@kernel
def first_outside(a, lo, hi):
    """The index of the first element of ``a`` outside [lo, hi), or -1: one pass without a branch (it
    vectorizes), then, only if something is outside, a second to find it."""
    width = U(hi - lo)
    outside = False
    for i in range(a.size):
        outside |= U(a[i] - lo) >= width  # below lo wraps around to a huge number: one test for both ends
    if outside:
        for i in range(a.size):
            if U(a[i] - lo) >= width:
                return i
    return -1


@kernel
def _first_bad_range(start, end, hi, empty_ok):
    """The index of the first range [start[i], end[i]) not inside [0, hi) (or empty, unless ``empty_ok``), or
    -1; as ``first_outside``, a branchless pass first."""
    least = 0 if empty_ok else 1
    bad = False
    for i in range(start.size):
        bad |= (start[i] < 0) | (end[i] > hi) | (end[i] - start[i] < least)
    if bad:
        for i in range(start.size):
            if start[i] < 0 or end[i] > hi or end[i] - start[i] < least:
                return i
    return -1


def int_array(a: Any, op: str, what: str, copy: bool = True) -> np.ndarray:
    """``a`` as a contiguous 1-D int64 array the caller cannot change any more, or OperationError: integers
    only (no floats, NaN, booleans, objects), each fitting in 64 bits. A copy, unless ``a`` is frozen
    (``pagetable.frozen``, as a notifier range's arrays are): an operation checks its arguments, then runs
    plugins' hooks (its invalidation), then uses them, and a plugin must not move them in between.
    ``copy=False``: no copy of an int64 array (for a caller that copies it at once itself)."""
    if isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 1 and (is_frozen(a) or not copy):
        return np.ascontiguousarray(a)
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OperationError(f"{op}: {what} must be an array of integers, got {_short(a)} ({exc})") from None
    if arr.size == 0 and arr.ndim <= 1:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise OperationError(f"{op}: {what} must be a one-dimensional array of integers, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        hint = " (a mask? np.flatnonzero gives its indices)" if arr.dtype.kind == "b" else ""
        raise OperationError(f"{op}: {what} must be integers, got {arr.dtype} values{hint}: {_short(arr)}")
    if arr.dtype == np.uint64 and int(arr.max()) > INT64_MAX:
        raise OperationError(f"{op}: {what} holds {int(arr.max())}, which does not fit in 64 bits")
    return np.array(arr, dtype=np.int64) if copy else np.ascontiguousarray(arr, dtype=np.int64)


def int_scalar(x: Any, op: str, what: str) -> int:
    """``x`` as a Python int: an integer (Python or numpy; not a bool, a float or a NaN), or OperationError."""
    if isinstance(x, bool | np.bool_) or not isinstance(x, numbers.Integral):
        raise OperationError(f"{op}: {what} must be an integer, got {_short(x)}")
    if not -INT64_MAX - 1 <= x <= INT64_MAX:
        raise OperationError(f"{op}: {what} is {int(x)}, which does not fit in 64 bits")
    return int(x)


def pages_arg(pages: Any, npages: int, op: str, what: str = "pages") -> np.ndarray:
    """Page numbers, each in [0, npages), as an int64 array."""
    arr = int_array(pages, op, what)
    bad = first_outside(arr, 0, npages)
    if bad >= 0:
        raise OperationError(f"{op}: {what} must be in [0, {npages}), got {int(arr[bad])} (at index {bad})")
    return arr


def frames_arg(sim: Any, frames: Any, op: str, what: str = "frames") -> np.ndarray:
    """Frame numbers of the host (RAM and device memory), as an int64 array."""
    return pages_arg(frames, sim.host._ft.key.size, op, what)


def page_arg(page: Any, npages: int, op: str, what: str = "page") -> int:
    """One page number in [0, npages)."""
    p = int_scalar(page, op, what)
    if not 0 <= p < npages:
        raise OperationError(f"{op}: {what} must be in [0, {npages}), got {p}")
    return p


def range_arg(start: Any, end: Any, npages: int, op: str) -> tuple[int, int]:
    """A range [start, end) of pages: 0 <= start < end <= npages."""
    s, e = int_scalar(start, op, "start"), int_scalar(end, op, "end")
    if not 0 <= s < e <= npages:
        raise OperationError(f"{op}: range [{s}, {e}) is not inside [0, {npages}); a range needs 0 <= start < end "
                             f"<= {npages}")  # fmt: skip
    return s, e


def ranges_arrays(start: Any, end: Any, npages: int, op: str, empty_ok: bool = True,
                  copy: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A batch of ranges [start[i], end[i]), each inside [0, npages) (and holding a page, unless ``empty_ok``),
    as two int64 arrays of one shape (copies, or frozen: ``int_array``)."""
    s, e = int_array(start, op, "start", copy), int_array(end, op, "end", copy)
    if s.shape != e.shape:
        raise OperationError(f"{op}: start and end must be arrays of one shape, got {s.shape} and {e.shape}")
    bad = _first_bad_range(s, e, npages, empty_ok)
    if bad >= 0:
        need = "<=" if empty_ok else "<"
        raise OperationError(f"{op}: range [{int(s[bad])}, {int(e[bad])}) (at index {bad}) is not inside [0, "
                             f"{npages}); each range needs 0 <= start {need} end <= {npages}")  # fmt: skip
    return s, e


def access_pages(pages: Any, npages: int, op: str, copy: bool = True) -> np.ndarray:
    """A batch of accesses' page numbers, each in [0, npages), as the access kernel takes them: int32, a
    copy (the kernel stops for reclaim, which runs plugins, and resumes on the same array); ``copy=False``
    for a batch only the framework holds (a workload's, taken as it returned it)."""
    if (isinstance(pages, np.ndarray) and pages.dtype == np.int32 and pages.ndim == 1 and pages.flags.c_contiguous
            and pages.flags.writeable):  # (a read-only one is copied: one compiled variant of the kernel)  # fmt: skip
        bad = first_outside(pages, 0, npages)  # the common case: no conversion
        if bad < 0:
            return pages.copy() if copy else pages
        raise OperationError(f"{op}: pages must be in [0, {npages}), got {int(pages[bad])} (at index {bad})")
    return pages_arg(pages, npages, op).astype(np.int32)  # checked before the cast: nothing wraps around


def write_flags(writes: Any, n: int, op: str) -> np.ndarray:
    """One bool per access (None: all reads), as a contiguous bool array."""
    if writes is None:
        return np.zeros(n, dtype=np.bool_)
    try:
        arr = np.asarray(writes)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OperationError(f"{op}: writes must be an array of bools, got {_short(writes)} ({exc})") from None
    if arr.dtype.kind not in "biu" or arr.shape != (n,):
        raise OperationError(f"{op}: writes must be one bool per page ({n},), got {arr.dtype} of shape {arr.shape}")
    return np.array(arr, dtype=np.bool_)  # a copy, as ``access_pages``


def count_arg(n: Any, op: str, what: str) -> int:
    """A count: an integer >= 0."""
    v = int_scalar(n, op, what)
    if v < 0:
        raise OperationError(f"{op}: {what} must be >= 0, got {v}")
    return v


def node_arg(node: Any, nodes: int, op: str, kinds: str) -> int:
    """A node number in [0, nodes) (``kinds`` says which nodes count, for the message)."""
    n = int_scalar(node, op, "node")
    if not 0 <= n < nodes:
        raise OperationError(f"{op}: node must be in 0..{nodes - 1} ({kinds}), got {n}")
    return n


def check_ns(ns: Any, op: str) -> None:
    """A time in nanoseconds: a finite number >= 0 (a NaN, a negative or an infinite time would spoil every
    sum it joins). Cheap enough for a path taken per batch: one chained comparison."""
    try:
        if 0.0 <= ns < math.inf:
            return
    except TypeError:
        pass
    raise OperationError(f"{op}: ns must be a finite number of nanoseconds >= 0, got {_short(ns)}")


def mm_arg(sim: Any, mm: Any, op: str, what: str = "mm") -> Any:
    """One of the simulation's address spaces."""
    if not any(mm is m for m in sim.mms):
        raise OperationError(f"{op}: {what} must be one of sim.mms, got {_short(mm)}")
    return mm


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."
