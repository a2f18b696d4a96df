"""``kernel``: how the framework compiles the numba functions that work on the simulator's arrays."""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def kernel(fn=None, *, inline: bool = False):
    """``njit``, cached, and compiled without numba's reference counting (NRT).

    Numba reference-counts every array one function hands another, even an inlined one, with a call
    into its runtime each time: on the fault path that was dozens of calls per fault, most of its cost.
    A kernel allocates nothing (numba refuses to compile one that does under this flag), and the arrays
    it takes belong to the simulation, which outlives every call: there is nothing to count.
    ``inline=True``: a small helper, inlined into each kernel that calls it.

    Kernels release the GIL (``nogil``): the workload's next batch is drawn on another thread meanwhile
    (``WorkloadStream.ahead``).
    """
    options = {"cache": True, "_nrt": False, "nogil": True}
    if inline:
        options["inline"] = "always"
    return njit(**options) if fn is None else njit(**options)(fn)


# An index cast to U (free) skips numba's negative-index wrap-around, which costs more than a random
# array access itself in the hot loops: ``a[U(i)]`` for an ``i`` known to be >= 0.
U = np.uint64


# Iterations between a prefetch and the load it prepares: a DRAM latency's worth of a small loop's work.
# In the core benchmark's loops 48 did no better than 16, and 8 worse.
AHEAD = 16


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the CPU to start loading ``array[index]`` into its caches (a hint: never faults, no result).

    For loops whose random loads are known some iterations ahead (a sampler's table, the entries and
    PTEs of accesses to come, the pages of reclaim's frames): the load then overlaps the work in between
    instead of stalling it.
    """

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [address.type], ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        )
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep
        return context.get_dummy_value()

    return types.none(array, types.uint64), codegen


# Reductions without a temporary: ``np.count_nonzero(a >= 0)`` allocates a bool array as large as ``a``, a page
# per 4 KiB of it, which on a table of every guest page shows in the run's peak memory.


@kernel
def count_at_least(a, value):
    """How many elements of ``a`` are >= ``value``."""
    n = 0
    for x in a:
        n += x >= value
    return n


@kernel
def count_set(a, mask):
    """How many elements of ``a`` have a bit of ``mask`` set."""
    n = 0
    for x in a:
        n += (x & mask) != 0
    return n


@kernel
def count_at_most(a, value):
    """How many elements of ``a`` are <= ``value``."""
    n = 0
    for x in a:
        n += x <= value
    return n
