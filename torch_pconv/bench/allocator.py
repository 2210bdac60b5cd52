"""The C allocator while the benchmark runs: freed memory kept in the process, where it is glibc's.

glibc's malloc, left to its defaults, hands freed memory back to the system (a block above its
mmap threshold is unmapped on free; the heap's free top is trimmed above its trim threshold), and
the next call faults the same pages in again, zeroed by the kernel: system time that lands on some
samples and not others. ``configure`` raises those thresholds through ``mallopt`` (called through
ctypes: no dependency), so that the next call reuses the freed block instead. Measured on 2 shared
cores, ``bench --configs fixed k3 --repeats 9``, 13 interleaved pairs of runs: page faults 72
thousand per run against 94-167 thousand, system time 0.4-0.5 s against 0.5-0.8 s, and in the
quieter runs a time's spread (IQR/median, the median over the rows) 5-12 % against 13-19 %.
Tensors above 32 MiB gain the most: see ``KEPT``.

Elsewhere (macOS, Windows, musl) the allocator is left as it is, and the report says so. Memory
figures do not move with this: they are the profiler's live tensor bytes, not what the process
holds.
"""

from __future__ import annotations

import ctypes
import platform

MiB = 2**20

# mallopt's parameters (glibc's malloc.h) and the values the benchmark sets. The mmap threshold
# cannot go above 32 MiB (glibc refuses more on 64-bit), so a bigger block (at --full sizes) would
# still be mapped and unmapped on every call: M_MMAP_MAX 0 puts those on the heap too. Measured on
# a config of 39 MB tensors (1×8×1100×1100, k=3), 5 repeats, 2 cores: with glibc's defaults, or
# the three thresholds alone, half its CPU time was system time (30-32 s of 61-64 s, 11-12 million
# page faults); with M_MMAP_MAX 0 too, 0.6 s of 26 s (0.25 million), and it ran 58 s, not 138-140.
KEPT = {
    "M_MMAP_THRESHOLD": (-3, 32 * MiB),  # blocks below this come from the heap, which keeps them
    "M_MMAP_MAX": (-4, 0),  # and those above it too (glibc still maps one that no heap can hold)
    "M_TRIM_THRESHOLD": (-1, 2**30),  # the heap's free top is given back only above 1 GiB
    "M_TOP_PAD": (-2, 64 * MiB),  # the heap grows by this much more each time: fewer brk calls
}

_setting = "as the process started it (the benchmark's setting not applied)"


def setting() -> str:
    """What the benchmark did to this process's allocator, in words: the report's 'allocator'."""
    return _setting


def configure(keep_freed: bool = True) -> str:
    """Keep freed memory in the process (``keep_freed``, on glibc) or leave the allocator alone; say which.

    Call it before the benchmark's first tensor: blocks that are already mapped are still given
    back when freed.
    """
    global _setting
    libc = _glibc()
    if libc is None:
        _setting = f"{_libc_name()}: its own defaults (only glibc's is tuned)"
    elif not keep_freed:
        _setting = f"{_libc_name()}: its defaults (--default-allocator)"
    else:
        refused = [name for name, (option, value) in KEPT.items() if libc.mallopt(option, value) != 1]
        values = ", ".join(f"{name} {_size(value)}" for name, (_, value) in KEPT.items())
        _setting = f"{_libc_name()}, freed memory kept (mallopt {values})"
        if refused:
            _setting += f"; refused: {', '.join(refused)}"
    return _setting


def _glibc() -> ctypes.CDLL | None:
    """The running process's C library where it is glibc (which has mallopt); None elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols the process already has: its own C library
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _libc_name() -> str:
    name, version = platform.libc_ver()
    return f"{name} {version}" if name else f"{platform.system() or 'this platform'}'s C library"


def _size(value: int) -> str:
    return f"{value // 2**30} GiB" if value >= 2**30 else f"{value // MiB} MiB" if value else "0"
