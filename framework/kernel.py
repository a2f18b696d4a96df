"""``kernel``: how the framework compiles the numba functions that work on the simulator's arrays."""

import numpy as np
from numba import njit


def kernel(fn=None, *, inline: bool = False):
    """``njit``, cached, and compiled without numba's reference counting (NRT).

    Numba reference-counts every array one function hands another, even an inlined one, with a call
    into its runtime each time: on the fault path that was dozens of calls per fault, most of its cost.
    A kernel allocates nothing (numba refuses to compile one that does under this flag), and the arrays
    it takes belong to the simulation, which outlives every call: there is nothing to count.
    ``inline=True``: a small helper, inlined into each kernel that calls it.
    """
    options = {"cache": True, "_nrt": False}
    if inline:
        options["inline"] = "always"
    return njit(**options) if fn is None else njit(**options)(fn)


# An index cast to U (free) skips numba's negative-index wrap-around, which costs more than a random
# array access itself in the hot loops: ``a[U(i)]`` for an ``i`` known to be >= 0.
U = np.uint64
