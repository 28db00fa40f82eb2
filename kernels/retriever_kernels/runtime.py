"""The process's OpenMP settings: three thread pools that must not busy-wait against each other.

A process that encodes text and searches loads up to three GNU OpenMP runtimes, each with its own
thread pool: torch's (``torch/lib/libgomp.so.1``, the encoder's forward pass), faiss-cpu's bundled
copy (FDE candidates) and the system's (numba's ``omp`` threading layer: every parallel kernel
here). By default a libgomp worker spins for a while after each parallel region before it sleeps,
so on a machine with few cores the idle pools burn the cores the busy one needs. Measured on a
2-core AMD EPYC (Zen 4) with another process busy beside it (``bench/user_path/end_to_end.py`` and
``docs/performance.md`` hold the current figures): one text query's encoding took 845 ms at p50 with
the default wait policy and 14 ms with ``OMP_WAIT_POLICY=PASSIVE``; 128 queries 6.4 s and 0.66 s.

So, unless the user decided themselves (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` already in the
environment), importing ``retriever_kernels`` (which ``import retriever`` does first) sets
``OMP_WAIT_POLICY=PASSIVE``: workers sleep as soon as a region ends. Each libgomp copy reads the
variable once, when it is loaded, so this holds for every runtime loaded after the import: faiss's,
numba's and torch's when ``retriever`` is imported before torch. A program that imports torch
first keeps torch's pool on the default policy (the others still sleep); set the variable before
starting Python to cover it too. numba's threading layer is left to numba (``omp`` where the
system has libgomp; ``NUMBA_THREADING_LAYER`` chooses another): ``omp`` is safe for the concurrent
searches of the HTTP service, where ``workqueue`` would abort the process, and with passive
waiting it measured as fast. Thread counts (``OMP_NUM_THREADS``, ``torch.set_num_threads``,
``numba.set_num_threads``) are never changed here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

#: Environment defaults applied at import unless the user set any of the variables in ``USER_KEYS``.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Variables that mean "the user chose how OpenMP threads wait": their presence disables the defaults.
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_openmp_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`OPENMP_DEFAULTS` in ``environ`` (``os.environ``) unless the user set a wait policy.

    Returns the variables set (empty when the user's own settings were kept). Logs (INFO) when
    torch was imported before, since torch's runtime has then already read its settings.
    """
    env = os.environ if environ is None else environ
    if any(k in env for k in USER_KEYS):
        return {}
    for key, value in OPENMP_DEFAULTS.items():
        env[key] = value
    if environ is None and "torch" in sys.modules:
        logger.info("torch was imported before retriever: its OpenMP threads keep the default (spinning) wait "
                    "policy; set OMP_WAIT_POLICY=PASSIVE before starting Python to make them sleep too")
    return dict(OPENMP_DEFAULTS)
