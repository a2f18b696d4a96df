"""Where some costs' values come from: each checked against the measurement it was set from.

These were rows of the validation table until issue 25: they compare a cost the model takes as input (or
the page-walk model's reference count, which the costs were calibrated with) with its own source, so they
show the cost was set as sourced, not that the model behaves as the kernel does (that is docs/validation.md).
``mmnsim-costs --doc`` prints them at the end of docs/costs.md; tests/test_costs.py checks each stays inside
its tolerance, or, for one marked outside, that it still is.
"""

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig

from .sources import number


@dataclass
class Row:
    name: str
    published: str  # the figure and where it is published (table, figure, section)
    low: float
    high: float
    unit: str
    tolerance: float  # a factor: inside when low / tolerance <= model <= high x tolerance
    setup: str  # the mmnsim config or command the model's number comes from
    model: Callable[[], float]
    outside: str = ""  # known outside its tolerance: what would fix it
    translation: bool = False  # reads the translation model (costs.walk_refs, plugins/kvm.py walk_refs)
    outside_if: Callable[[], bool] | None = None  # the row is known outside only while this holds

    def inside(self, value: float) -> bool:
        return self.low / self.tolerance <= value <= self.high * self.tolerance

    def known_outside(self) -> str:
        """What would fix the row if it is known to be outside its tolerance, else ''."""
        return self.outside if self.outside_if is None or self.outside_if() else ""


def compose(*overrides: str) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("mmnsim.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


SMALL = ("guest.memory_mib=64", "host.memory_mib=256", "host.swap_mib=0", "engine.accesses_per_tick=65536")


def secondary_of(*overrides: str):
    """The first client's secondary MMU of a small simulation (built, not run)."""
    from .simulation import Simulation

    return Simulation(compose(*SMALL, *overrides)).clients[0].secondary


def _fault_stall(sec) -> float:
    """What one device fault costs its client: the time charged plus the stall put on it."""
    before = sec.client._pending_stall
    charged = float(sec.fault_cost_ns(1))
    return charged + sec.client._pending_stall - before


def _no_walk_caches() -> bool:
    """The walk model counts architectural references (no page-walk caches: no ``costs.pwc_miss``)."""
    return "pwc_miss" not in compose().costs


def _native_refs() -> float:
    return float(secondary_of("secondary=rdma").walk_refs(False))  # a device's one-dimensional walk


def _nested_refs() -> float:
    return float(secondary_of("secondary=kvm").walk_refs(False))  # EPT: a two-dimensional 4K/4K walk


def _cfg_value(*keys: str, overrides: tuple[str, ...] = ()) -> float:
    cfg = compose(*overrides)
    total = 0.0
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        total += float(node)
    return total


ROWS = [
    Row("Native page walk, memory accesses per TLB miss (page-walk caches counted)",
        "1.5 accesses (Park et al., \"Every Walk's a Hit\", ASPLOS 2022, abstract and section 2)", 1.5, 1.5,
        "accesses", 1.25, "`secondary=rdma`: the device's one-dimensional walk, `walk_refs(huge=False)`",
        _native_refs, translation=True, outside_if=_no_walk_caches,
        outside="the architectural count (4) without page-walk caches; the walk model with page-walk caches "
        "(wt-kernels: costs.pwc_miss) brings it to about 1.3"),
    Row("Nested (EPT 4K/4K) page walk, memory accesses per TLB miss (page-walk caches counted)",
        "4.4 accesses (Park et al., ASPLOS 2022, abstract: 'from 4.4 to 2.8 accesses' for virtualized walks)",
        4.4, 4.4, "accesses", 1.25, "`secondary=kvm`: KVM's two-dimensional walk, `walk_refs(huge=False)`",
        _nested_refs, translation=True, outside_if=_no_walk_caches,
        outside="the architectural 24 references (Bhargava et al., ASPLOS 2008) without page-walk caches; "
        "the walk model with page-walk caches (wt-kernels: costs.pwc_miss) brings it to about 4.4"),
    Row("Aging one page for reclaim (host young test plus KVM clear_young)",
        "28-31 ns a page: access_tracking_perf_test -p -l -b 1G -v 1, MGLRU aging pass 7.3-8.2 ms for 1 GiB "
        "(J. Houghton, KVM lockless aging series, 2024, cover letter table)", 28, 31, "ns", 2.0,
        "`costs.reclaim_scan_ns + secondary.age_page_ns` (what plugins/swap.py and plugins/kvm.py charge "
        "per page examined)", lambda: _cfg_value("costs.reclaim_scan_ns", "secondary.age_page_ns"),
        outside="the model charges a classic-LRU rmap walk (reclaim_scan_ns 50 ns) per page; MGLRU ages by "
        "walking page tables, about 30 ns a page in all. Modelling MGLRU's walk (or a reclaim_scan_ns of "
        "about 10 ns for it) would bring it inside"),
    Row("RDMA on-demand paging: one device page fault",
        "1.75-2.85 ms: NP-RDMA (Shen et al., arXiv 2310.11062, 2023, abstract) reports its 3.5-5.7 us faults "
        "as 500x faster than ODP on ConnectX NICs", 1.75e6, 2.85e6, "ns", 2.0,
        "`secondary=rdma`: the stall one device fault puts on the NIC's queue pair (`fault_cost_ns(1)`)",
        lambda: _fault_stall(secondary_of("secondary=rdma"))),
    Row("GPU replayable faults (UVM/HMM): servicing a batch holding one fault",
        "20-50 us per batch: GPU runtime fault handling (Kim et al., 'Batch-Aware Unified Memory Management "
        "in GPUs for Irregular Workloads', ASPLOS 2020, section 3)", 20e3, 50e3, "ns", 2.0,
        "`secondary=gpu secondary.warps=1`: the plugin's `fault_cost_ns(1)` with the whole GPU waiting on "
        "the batch (batch_ns + fault_ns)",
        lambda: float(secondary_of("secondary=gpu", "secondary.warps=1").fault_cost_ns(1))),
    Row("Compressed swap: one major fault's swap-in",
        "1.7 us zram (lz4) mean (community fio measurements) to 6 us zswap far-memory access "
        "(Lagar-Cavilla et al., 'Software-Defined Far Memory in Warehouse-Scale Computers', ASPLOS 2019, "
        "section 6)", 1700, 6000, "ns", 2.0, "`costs.swap_in_ns`", lambda: _cfg_value("costs.swap_in_ns")),
    Row("A vCPU kicked by a remote TLB flush request: exit, flush, re-entry",
        "about 700 ns for a VM exit and entry round trip, 2,000 cycles (SplitX, WIOV 2011, section 2)",
        700, 700, "ns", 2.0, "`secondary.flush_ipi_ns` (plugins/kvm.py charges it per vCPU per flush)",
        lambda: _cfg_value("secondary.flush_ipi_ns")),
    Row("Invalidating one page in the local TLB (INVLPG)",
        "about 100 ns a page (Documentation/arch/x86/tlb.rst and arch/x86/mm/tlb.c, the reasoning behind "
        "tlb_single_page_flush_ceiling = 33)", 100, 100, "ns", 2.0, "`costs.tlb_invalidate_page_ns`",
        lambda: _cfg_value("costs.tlb_invalidate_page_ns")),
]  # fmt: skip


def section(values: dict[str, float] | None = None) -> str:
    """The provenance checks as a markdown section of docs/costs.md."""
    values = values if values is not None else {r.name: r.model() for r in ROWS}
    lines = [
        "## Where some costs come from: each beside the measurement it was set from",
        "",
        "Checks of a cost (or of the page-walk model the costs were calibrated with) against its own source "
        "(framework/costchecks.py; tests/test_costs.py checks each). They were rows of the validation table "
        "until issue 25; they show a cost was set as sourced, not that the model behaves as the kernel does "
        "([validation.md](validation.md)). Inside means the model's number lies within [published low / "
        "tolerance, published high x tolerance]. Rows marked (T) read the translation model (walk references with "
        "page-walk caches, `mmnsim.costs.walk_refs`, and KVM's walk in plugins/kvm.py), so they follow its changes.",
        "",
        "| quantity | published measurement (source) | published | mmnsim setup | model | tolerance | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        value = values[r.name]
        status = "inside" if r.inside(value) else "**outside**"
        if r.known_outside():
            status += f": {r.known_outside()}"
        figure = number(r.low) + (f"-{number(r.high)}" if r.high != r.low else "")
        name = r.name + (" (T)" if r.translation else "")
        lines.append(f"| {name} | {r.published} | {figure} {r.unit} | {r.setup} | {_fmt(value)} {r.unit} | "
                     f"{r.tolerance:g}x | {status} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return number(float(f"{value:.3g}"))
