"""numba kernels for the retriever package: pure functions over numpy arrays.

This package imports only numpy and numba, never ``retriever``.
"""
