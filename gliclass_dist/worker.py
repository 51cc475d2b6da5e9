"""Process set-up where a worker starts: the OpenMP wait policy and torch's thread count for engine workers,
glibc's mmap threshold for Arrow I/O workers.

Call ``configure_worker`` first thing in a process that will run the engine (the Ray model actor's
``__init__``, the Spark Python worker's first model load, a Serve replica, the CLI), before anything
imports torch; ``configure_io_worker`` in a process that reads, encodes or writes Arrow data (the Ray job's
tokenize and write tasks). This module imports nothing heavy, so importing it is safe anywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

# OpenMP threads that spin while waiting make a CPU engine 2-3x slower wherever the cores are shared (Ray
# actors or Spark workers on one node, busy hosts): measured in bench/NOTES.md (section 5). An explicit
# setting in the environment always wins.
OMP_WAIT_POLICY = "PASSIVE"


def configure_worker(*, threads: int | None = None, max_threads: int | None = None) -> None:
    """Set ``OMP_WAIT_POLICY`` (unless already set) and optionally torch's intra-op thread count.

    The OpenMP runtime reads the policy once, when torch loads it: called after torch was imported in
    this process, the policy takes effect only in child processes started later (a debug line says so).
    ``threads`` sets torch's thread count; ``max_threads`` only lowers it (one worker per task slot: the
    task's cores, not the machine's). Either imports torch.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
        if "torch" in sys.modules:
            logger.debug("torch was loaded before OMP_WAIT_POLICY was set; it applies to child processes only")
    if threads is None and max_threads is None:
        return
    import torch

    target = threads if threads is not None else min(torch.get_num_threads(), int(max_threads or 1))
    if target >= 1 and torch.get_num_threads() != target:
        logger.info("torch threads: %d in process %d", target, os.getpid())
        torch.set_num_threads(target)


# glibc raises its mmap threshold (up to 32 MiB) after the first large free, so later multi-MB Arrow buffers
# (Arrow's system allocator, which the Ray job asks for, is glibc's malloc) come from the heap, where freed
# memory stays with the process: a Ray tokenize worker then levelled 1.3x higher at 5M rows than at 1M, and
# 1.08x with the threshold fixed at 1 MiB (bench/README.md, "Scale"). Only for I/O workers: an engine process
# with it fixed ran a real model ~10% slower (bench/NOTES.md, section 12).
IO_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, <malloc.h>


@functools.cache
def configure_io_worker(mmap_threshold: int = IO_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``mmap_threshold`` bytes in this process (once), so freed buffers at
    least that large go back to the system. True when set; False where the C library is not glibc or the
    environment already fixes it (``MALLOC_MMAP_THRESHOLD_``: an explicit setting wins)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    logger.debug("glibc mmap threshold fixed at %d bytes in process %d: %s", mmap_threshold, os.getpid(), done)
    return done


__all__ = ["IO_MMAP_THRESHOLD", "OMP_WAIT_POLICY", "configure_io_worker", "configure_worker"]
