"""numpy's PCG64 stream, drawn inside numba kernels: the same numbers, without numpy's per-value calls.

A workload's random numbers come from its numpy Generator (``PCG64``, from the run's seed). Drawing tens
of millions of them through numpy costs more than the simulation of the accesses they pick: ``random_raw``
and ``random(dtype=float32)`` call the generator through a function pointer per value and fill a fresh
array. Here a kernel steps the generator itself, from a copy of its state (``load``), and the state goes
back to the Generator afterwards (``store``), so the Generator continues exactly where the kernel stopped:
a run draws the numbers it drew before, in the same order, and results do not change.

The algorithm is numpy's ``pcg64.h``: a 128-bit LCG (multiplier 0x2360ED051FC65DA44385DF649FCCF645,
the stream's own increment), output XSL-RR (high half XOR low half, rotated right by the top 6 bits).
32-bit draws (for float32) take the low half of a 64-bit draw and keep the high half for the next one,
as numpy's ``next_uint32`` does.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .kernel import U, kernel

_MULT_HI = np.uint64(2549297995355413924)
_MULT_LO = np.uint64(4865540595714422341)
_MASK64 = (1 << 64) - 1
# The state array: the LCG's state and increment as (high, low) halves, then numpy's 32-bit buffer.
STATE_HI, STATE_LO, INC_HI, INC_LO, HAS_UINT32, UINTEGER = range(6)


@intrinsic
def _mul_high(typingctx, a, b):
    """The high 64 bits of the 128-bit product of two uint64."""

    def codegen(context, builder, sig, args):
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


def load(bit_generator: np.random.BitGenerator) -> np.ndarray:
    """A copy of a PCG64 generator's state for the kernels (every Generator the framework makes is one)."""
    if not isinstance(bit_generator, np.random.PCG64):
        raise TypeError(f"a workload's generator must be numpy's PCG64 (np.random.default_rng), got "
                        f"{type(bit_generator).__name__}")  # fmt: skip
    s = bit_generator.state
    state, inc = s["state"]["state"], s["state"]["inc"]
    return np.array([state >> 64, state & _MASK64, inc >> 64, inc & _MASK64, s["has_uint32"], s["uinteger"]],
                    dtype=np.uint64)  # fmt: skip


def store(bit_generator: np.random.PCG64, st: np.ndarray) -> None:
    """Give the generator the state the kernels left in ``st``."""
    s = bit_generator.state
    s["state"] = {"state": (int(st[STATE_HI]) << 64) | int(st[STATE_LO]), "inc": s["state"]["inc"]}
    s["has_uint32"] = int(st[HAS_UINT32])
    s["uinteger"] = int(st[UINTEGER])
    bit_generator.state = s


@kernel(inline=True)
def next_uint64(st):
    """``random_raw()``: step the LCG (state * multiplier + increment, mod 2**128), output XSL-RR."""
    hi, lo = st[STATE_HI], st[STATE_LO]
    new_hi = _mul_high(lo, _MULT_LO) + lo * _MULT_HI + hi * _MULT_LO
    new_lo = lo * _MULT_LO
    lo = new_lo + st[INC_LO]
    hi = new_hi + st[INC_HI] + (np.uint64(1) if lo < new_lo else np.uint64(0))
    st[STATE_HI] = hi
    st[STATE_LO] = lo
    x = hi ^ lo
    r = hi >> np.uint64(58)
    return (x >> r) | (x << ((np.uint64(64) - r) & np.uint64(63)))


@kernel
def fill_below(st, fraction, out):
    """``out[:] = random(out.size, dtype=float32) < fraction``: float32 draws from 32-bit halves."""
    scale = np.float32(1.0 / 16777216.0)
    i = 0
    n = out.size
    if n and st[HAS_UINT32]:
        st[HAS_UINT32] = 0
        out[0] = np.float32(st[UINTEGER] >> np.uint64(8)) * scale < fraction
        i = 1
    while i < n:
        r = next_uint64(st)
        st[UINTEGER] = r >> np.uint64(32)  # numpy keeps the high half, used or not
        out[U(i)] = np.float32((r & np.uint64(0xFFFFFFFF)) >> np.uint64(8)) * scale < fraction
        if i + 1 == n:
            st[HAS_UINT32] = 1  # the high half waits for the next 32-bit draw
            break
        out[U(i + 1)] = np.float32(r >> np.uint64(40)) * scale < fraction
        i += 2


def random_below(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """``rng.random(n, dtype=np.float32) < fraction``, the same bools from the same draws, faster."""
    st = load(rng.bit_generator)
    out = np.empty(n, dtype=np.bool_)
    fill_below(st, np.float32(fraction), out)
    store(rng.bit_generator, st)
    return out
