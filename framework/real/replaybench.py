"""How fast the real guest replays accesses that do not fault (issue 24: at least 10 M accesses per second).

    python -m mmnsim.real.replaybench                      # 10 M uniform accesses over a 1 GiB guest, 1 vCPU
    python -m mmnsim.real.replaybench --vcpus 2 --guest-thp

The guest boots (one write to every page), then replays ``accesses`` uniformly random accesses (30 %
writes) over its whole RAM. Every page is then resident and mapped by KVM, so no access faults: the figure
is the replay itself (the guest's loads and stores, its TLB misses, one exit to the host per chunk). The
result says so: ``pf_fixed`` (KVM's vCPU faults during the timed pass) must be 0, and is reported.
Absolute rates depend on the machine and its load; this machine is itself a guest, under PVM.
"""

import argparse
import json
import time

import numpy as np

from .guest import Guest


def replay_rate(accesses: int = 10_000_000, memory_mib: int = 1024, vcpus: int = 1, guest_thp: bool = False,
                seed: int = 0) -> dict:  # fmt: skip
    """Boot a guest, replay ``accesses`` random accesses that all hit, and report the rate.

    Returns ``accesses``, ``seconds`` (the guest's wall time, ``Guest.run``), ``accesses_per_s``,
    ``harness_seconds`` (the same pass seen from this process: list encoding and round trips included),
    ``pf_fixed`` and ``exits`` during the pass, and the configuration."""
    rng = np.random.default_rng(seed)
    with Guest(memory_mib, vcpus=vcpus, guest_thp=guest_thp) as guest:
        guest.madvise("hugepage" if guest_thp else "nohugepage")
        guest.run(np.arange(guest.ram_pages, dtype=np.int32), np.ones(guest.ram_pages, dtype=bool))
        pages = rng.integers(0, guest.ram_pages, accesses, dtype=np.int32)
        writes = rng.random(accesses) < 0.3
        before = guest.stats()
        start = time.perf_counter()
        seconds = guest.run(pages, writes)
        harness_seconds = time.perf_counter() - start
        after = guest.stats()
    return {
        "accesses": accesses,
        "seconds": seconds,
        "accesses_per_s": accesses / seconds,
        "harness_seconds": harness_seconds,
        "pf_fixed": after["pf_fixed"] - before["pf_fixed"],
        "exits": after["exits"] - before["exits"],
        "memory_mib": memory_mib,
        "vcpus": vcpus,
        "guest_thp": guest_thp,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accesses", type=int, default=10_000_000)
    parser.add_argument("--memory-mib", type=int, default=1024)
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--guest-thp", action="store_true", help="the guest maps its RAM with 2 MiB pages")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = replay_rate(args.accesses, args.memory_mib, args.vcpus, args.guest_thp)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['accesses_per_s'] / 1e6:.1f} M accesses/s ({result['accesses']} accesses in "
              f"{result['seconds']:.3f} s, {result['pf_fixed']} faults, {result['exits']} exits; "
              f"{result['accesses'] / result['harness_seconds'] / 1e6:.1f} M/s with the harness)")  # fmt: skip


if __name__ == "__main__":
    main()
