"""What the SIMD micro-kernels are built for: the CPU's vector width, and small LLVM IR helpers.

The hand-written kernels (the MaxSim register tile in ``retriever_kernels.maxsim``, the residual-code
decoder in ``retriever_kernels.codes``) emit LLVM vector IR through llvmlite, numba's own code
generator, sized for the CPU numba compiles for: 16 float32 lanes with AVX-512, 8 otherwise.
"""

from __future__ import annotations

from llvmlite import ir
from numba import config

__all__ = ["tile_shape", "splat", "hsum"]


def tile_shape() -> tuple[int, int]:
    """(floats per vector, document rows per MaxSim pass) for the CPU numba compiles for."""
    features = config.CPU_FEATURES
    if features is None:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        return 16, 8
    return 8, 2


def splat(builder: ir.IRBuilder, value, width: int):
    """A ``width``-lane vector with every lane ``value`` (an IR scalar)."""
    vec = ir.VectorType(value.type, width)
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(i32, width), [0] * width))


def hsum(builder: ir.IRBuilder, vec, width: int):
    """Sum of a float vector's lanes, as a tree of halving adds (lane order: (0+w/2) + ... )."""
    i32 = ir.IntType(32)
    n = width
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, h), list(range(h))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, h), list(range(h, n))))
        vec = builder.fadd(lo, hi)
        n = h
    return builder.extract_element(vec, ir.Constant(i32, 0))
