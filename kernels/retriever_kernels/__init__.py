"""numba kernels for the retriever package: pure functions over numpy arrays.

This package imports only numpy and numba (and torch, first, when it is installed: see below),
never ``retriever``. Importing it applies the process's OpenMP defaults (:mod:`.runtime`) before
any OpenMP runtime is loaded.
"""

from .runtime import apply_openmp_defaults

apply_openmp_defaults()

# Import order decides which GNU OpenMP runtime the process runs on: torch ships its own
# ``libgomp.so.1`` and numba's OpenMP threading layer loads the system's. When a numba parallel
# kernel runs before torch is imported (a ``Retriever.load`` warms the kernels up, then the first
# text query creates the encoder), torch ends up on the system runtime and its CPU forward pass
# ran ~10x slower on the 2-core test machine: a SciFact text query took 97 ms at p50 instead of
# 20 ms (encoding 59 ms instead of 6). Importing torch before any kernel runs keeps both fast (the
# MaxSim kernels are unchanged: 11.8 vs 12.0 ms). tests/test_threads.py checks the order holds.
try:  # pragma: no cover - torch is a dependency of the package; the kernels alone do not need it
    import torch  # noqa: F401
except ImportError:
    pass
