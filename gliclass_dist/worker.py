"""Process set-up where an engine worker starts: the OpenMP wait policy and torch's thread count.

Call ``configure_worker`` first thing in a process that will run the engine (the Ray model actor's
``__init__``, the Spark Python worker's first model load, a Serve replica, the CLI), before anything
imports torch. This module imports nothing heavy, so importing it is safe anywhere.
"""

from __future__ import annotations

import logging
import os
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


__all__ = ["OMP_WAIT_POLICY", "configure_worker"]
