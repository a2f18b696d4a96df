"""The kernel being simulated (kernel=6.x, 6.1 or 2008), the walk model with page-walk caches and splintering,
and the unsafe unpinned mode."""

import argparse
from importlib import resources

import numpy as np
import polars as pl
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import cli, run, simulation
from mmnsim import Event, hookimpl, swap_out, walk_refs
from mmnsim.bench import _config as bench_config
from mmnsim.cli import check_overrides, quote_numbered_options
from mmnsim.config import ConfigError
from mmnsim.costs import translation_ns
from mmnsim.experiment import experiment_names
from mmnsim.secondary import MODE, SEC_RETRY_WHOLE_VM, SEC_YOUNG
from mmnsim.sources import compose_checked

# -- translation --


def test_walk_refs_without_caches_are_the_architectural_counts_and_calibrated_with_them():
    assert walk_refs(1.0, 4) == 4 and walk_refs(1.0, 3) == 3
    assert [walk_refs(1.0, h, g) for g, h in ((4, 4), (4, 3), (3, 4), (3, 3))] == [24, 19, 19, 15]
    assert walk_refs(0.11, 4, 4) == pytest.approx(4.4, abs=0.05)  # Park et al. 2022: 4.4 per nested walk
    assert walk_refs(0.11, 4) == pytest.approx(1.33, abs=0.01)


def _kvm(*overrides):
    sim = simulation("workload.accesses=0", "guest.memory_mib=16", "host.memory_mib=64", *overrides)
    return sim, sim.tenants[0].secondary


def test_a_2m_spte_under_4k_guest_pages_is_splintered_only_the_walk_shortens():
    sim, kvm = _kvm("guest.thp=false")
    costs = sim.costs
    assert not kvm.tlb_huge()
    pages = 1 << 20  # a footprint far beyond the TLB's reach at either page size
    small = translation_ns(costs, 10**6, 0, pages, kvm.walk_refs, kvm.tlb_huge())
    host_huge = translation_ns(costs, 10**6, 10**6, pages, kvm.walk_refs, kvm.tlb_huge())
    assert 1.03 < small / host_huge < 1.26  # 4K/4K over 4K/2M: only the shorter walk (19 vs 24 at most)
    sim2, kvm2 = _kvm("guest.thp=true")
    assert kvm2.tlb_huge()
    both_huge = translation_ns(costs, 10**6, 10**6, 100_000, kvm2.walk_refs, kvm2.tlb_huge())
    assert both_huge == 0.0  # 2M/2M: 1,536 entries of 2 MiB reach 3 GiB
    assert translation_ns(costs, 10**6, 10**6, 100_000, kvm.walk_refs, kvm.tlb_huge()) > 0  # 4K/2M: misses


def test_guest_pages_set_the_guest_walk_depth():
    _, k4 = _kvm("guest.thp=false")
    _, k2 = _kvm("guest.thp=true")
    assert k2.walk_refs(False) < k4.walk_refs(False)
    _, shadow = _kvm("guest.thp=false", "secondary.paging=shadow")
    assert shadow.walk_refs(False) == pytest.approx(walk_refs(0.11, 4))  # one dimension


# -- the 2008 kernel --


class PageRecorder:
    """Logs invalidate_page and start/end calls; checks that a page is still in its frame when told."""

    label = "page-recorder"

    def __init__(self, mm):
        self.mm = mm
        self.log: list[tuple] = []

    @hookimpl
    def invalidate_page(self, mm, pages):
        ft, pte = mm.sim.host.ft, mm.pte[pages]
        still_there = bool(np.all((pte >= 0) & (ft.key[np.maximum(pte, 0)] == mm.base + pages)))
        self.log.append(("page", pages.size, still_there))

    @hookimpl
    def invalidate_range_start(self, ranges):
        self.log.append(("start", ranges.event, len(ranges)))

    @hookimpl
    def invalidate_range_end(self, ranges):
        self.log.append(("end", ranges.event, len(ranges)))


def _booted(*overrides):
    sim, kvm = _kvm(*overrides)
    sim.run()
    rec = PageRecorder(sim.tenants[0].mm)
    sim.tenants[0].mm.chain.subscribe(rec)
    return sim, sim.tenants[0].mm, kvm, rec


@pytest.mark.parametrize("kernel", ["2008", "6.x"])
def test_reclaim_invalidates_per_page_with_invalidate_page_only_on_the_2008_kernel(kernel):
    sim, mm, kvm, rec = _booted(f"kernel='{kernel}'")
    frames = mm.pte[:8].astype(np.int64)
    seq = int(kvm.state[0])
    assert swap_out(sim, frames) == 8
    assert (kvm.spte[:8] < 0).all() and kvm.metrics["tlb_flushes"] == 8  # zapped and flushed, page by page
    m = sim.metrics()
    if kernel == "2008":
        assert rec.log == [("page", 8, True)]  # no bracket; told before the frames were freed
        assert m["invalidate_page_calls"] == 8 and m["invalidations_clear"] == 8
        assert int(kvm.state[0]) == seq + 1  # mmu_notifier_seq++: a fault in flight retries
    else:
        assert rec.log == [("start", Event.CLEAR, 8), ("end", Event.CLEAR, 8)]
        assert m["invalidate_page_calls"] == 0
    assert sim.check_invariants().counts.sum() == 0


def test_munmap_still_brackets_on_the_2008_kernel():
    sim, mm, kvm, rec = _booted("kernel='2008'")
    mm.munmap(0, 4)  # zap_page_range: invalidate_range_start/end in 2.6.27 too
    assert rec.log == [("start", Event.UNMAP, 1), ("end", Event.UNMAP, 1)]


def test_migration_uses_invalidate_page_on_the_2008_kernel():
    sim, mm, kvm, rec = _booted("kernel='2008'", "host.numa_nodes=2")
    moved = sim.migrate(mm, np.arange(4), 1 - int(sim.host.node_of(int(mm.pte[0]))))
    assert moved == 4 and rec.log == [("page", 4, True)]


def test_2008_ept_aging_always_answers_old_and_reclaim_cannot_see_the_guest():
    sim, mm, kvm, _ = _booted("kernel='2008'")
    assert not kvm.young and not kvm.state[MODE] & SEC_YOUNG
    kvm.sflags[:10] |= 1  # accessed
    young = mm.chain.young("clear_flush_young", np.arange(10), np.arange(1, 11))
    assert not young.any() and kvm.metrics["tlb_flushes"] == 0
    assert sim.metrics()["accessed_violations"] == 0  # "old" from an MMU that cannot see is no lie


def test_2008_shadow_aging_flushes_whenever_a_page_was_young_today_it_does_not():
    for kernel, flushes in (("2008", 3), ("6.x", 0)):
        sim, mm, kvm, _ = _booted(f"kernel='{kernel}'", "secondary.paging=shadow")
        kvm.harvest_accessed(np.array([0]), np.array([16]), clear=True)
        sim.run_client(mm, kvm, np.array([1, 5, 9]))
        young = mm.chain.young("clear_flush_young", np.arange(16), np.arange(1, 17))
        assert young.sum() == 3
        assert kvm.metrics["tlb_flushes"] == flushes, kernel


@pytest.mark.parametrize(("kernel", "flushes"), [("6.1", 3), ("6.x", 0)])
def test_kvm_flushes_when_aging_finds_young_sptes_until_6_12_and_not_since_6_13(kernel, flushes):
    sim, mm, kvm, _ = _booted(f"kernel='{kernel}'")  # EPT, with accessed bits
    kvm.harvest_accessed(np.array([0]), np.array([16]), clear=True)
    sim.run_client(mm, kvm, np.array([1, 5, 9]))
    before = {k: kvm.metrics[k] for k in ("tlb_flushes", "vcpu_tlb_flushes")}
    young = mm.chain.young("clear_flush_young", np.arange(16), np.arange(1, 17))
    assert young.sum() == 3
    assert kvm.metrics["tlb_flushes"] - before["tlb_flushes"] == flushes  # one per range found young
    # the vCPUs flush: kicked in guest mode, or at their next entry (tests/test_flush_ipis.py)
    assert (kvm.metrics["vcpu_tlb_flushes"] > before["vcpu_tlb_flushes"]) == (flushes > 0)
    sim.run_client(mm, kvm, np.array([1, 5, 9]))
    mm.chain.young("clear_young", np.arange(16), np.arange(1, 17))  # never flushes, on any kernel
    assert kvm.metrics["tlb_flushes"] - before["tlb_flushes"] == flushes


def test_kernel_6_1_is_6x_but_for_kvms_flush_when_aging_and_fresh_lru_statistics():
    old, today = compose_checked(["kernel=6.1"]), compose_checked([])
    k_old, k_today = OmegaConf.to_container(old.kernel), OmegaConf.to_container(today.kernel)
    assert {k for k in k_today if k_old[k] != k_today[k]} == {"name", "young_flush", "lru_stats_flush_ms"}
    assert k_old["young_flush"] and not k_today["young_flush"]
    assert k_old["lru_stats_flush_ms"] == 0 and k_today["lru_stats_flush_ms"] == 2000
    rest = [k for k in today if k not in ("kernel", "hydra")]
    assert OmegaConf.masked_copy(old, rest) == OmegaConf.masked_copy(today, rest)  # costs, guest, host alike


def test_2008_kvm_retries_faults_vm_wide_today_per_gfn():
    assert _kvm("kernel='2008'")[1].state[MODE] & SEC_RETRY_WHOLE_VM
    assert not _kvm()[1].state[MODE] & SEC_RETRY_WHOLE_VM


@pytest.mark.parametrize("device", ["rdma", "gpu"])
def test_without_interval_notifiers_rdma_and_gpu_register_by_pinning(device):
    sim, m = run("kernel='2008'", f"secondary={device}", "secondary.mode=notifier", "workload.accesses=2000")
    sec = sim.tenants[0].secondary
    assert sec.pin_mode and not sim.tenants[0].mm.chain.subscribers()
    assert m["forced_pin"] == 1 and m["pinned_pages_peak"] > 0
    sim, m = run(f"secondary={device}", "secondary.mode=notifier", "workload.accesses=2000")
    assert not sim.tenants[0].secondary.pin_mode and m.get("forced_pin", 0) == 0


def test_the_2008_kernel_swaps_to_disk():
    sim, _ = _kvm("kernel='2008'")
    assert sim.costs.swap_in_ns >= 1_000_000 and sim.costs.sources["swap_in_ns"]["source"]
    assert _kvm()[0].costs.swap_in_ns < 100_000


def test_mmnsim_runs_every_kernel_from_the_command_line(workdir):
    tiny = ["guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=20000"]
    out = cli("-m", *tiny, "kernel=2008,6.1,6.x", "hydra.sweep.dir=sweep", cwd=workdir)
    assert out.returncode == 0, out.stderr
    files = sorted((workdir / "sweep").rglob("summary.parquet"))
    rows = pl.concat([pl.read_parquet(p) for p in files], how="diagonal_relaxed")
    assert sorted(rows["kernel.name"].to_list()) == ["2008", "6.1", "6.x"]
    assert rows.filter(pl.col("kernel.name") == "2008")["invalidate_page_calls"][0] > 0


def test_numbered_kernel_options_are_quoted_for_hydra():
    assert quote_numbered_options(["kernel=2008", "-m", "kernel=2008,6.x", "seed=1"]) == [
        "kernel='2008'", "-m", "kernel='2008','6.x'", "seed=1"]  # fmt: skip
    assert quote_numbered_options(["kernel=6.1", "kernel=6.1,6.x"]) == ["kernel='6.1'", "kernel='6.1','6.x'"]
    assert quote_numbered_options(["kernel='2008'"]) == ["kernel='2008'"]


def test_every_command_taking_overrides_takes_numbered_kernels():
    check_overrides(["kernel=6.1"])  # mmnsim
    check_overrides(["-m", "+experiment=swap", "kernel=6.1,2008"])  # mmnsim-experiment checks its overrides so
    assert compose_checked(["kernel=6.1"]).kernel.name == "6.1"  # mmnsim-costs, --sensitivity
    bench = argparse.Namespace(accesses=1, guest_mib=16, host_mib=16, seed=0, override=["kernel=6.1"])
    assert "kernel='6.1'" in bench_config(bench)  # mmnsim-bench


# -- what the 2008 kernel did not have --

NO_2008 = [  # (override, the key the error names)
    ("host.thp=always", "host.thp"),
    ("host.thp=madvise", "host.thp"),
    ("guest.madvise_hugepage=true", "guest.madvise_hugepage"),
    ("policies=[swap,defrag]", "policies.defrag"),
    ("policies=[numa]", "policies.numa"),
    ("+processes=[{name: p, memory_mib: 16, node: 0, madvise_hugepage: true, workload: {name: uniform}}]",
     "processes[0].madvise_hugepage"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "key"), NO_2008)
def test_the_2008_kernel_refuses_thp_compaction_and_numa_balancing(override, key):
    with pytest.raises(ConfigError) as err:
        compose_checked(["kernel=2008", override])
    assert str(err.value).startswith(f"{key}: ") and "kernel=2008 does not have" in str(err.value), err.value
    compose_checked(["kernel=6.1", override])  # later kernels have them


def test_asking_the_2008_kernel_for_thp_stops_before_any_job_in_one_line(workdir):
    out = cli("-m", "kernel=2008,6.x", "host.thp=always", "hydra.sweep.dir=sweep", cwd=workdir)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "mmnsim: host.thp: 'always' needs transparent huge pages and khugepaged (2.6.38), which kernel=2008 does "
        "not have; set host.thp=never, or choose a later kernel (kernel=6.1 or 6.x)"]  # fmt: skip
    assert not (workdir / "sweep").exists()


def test_the_2008_kernels_defaults_turn_off_what_it_did_not_have():
    old, today = compose_checked(["kernel=2008"]), compose_checked([])
    assert not old.guest.madvise_hugepage and not old.guest.thp and old.host.thp == "never"
    assert today.guest.madvise_hugepage and today.guest.thp  # QEMU's MADV_HUGEPAGE, the guest's own THP
    assert compose_checked(["kernel=2008", "guest.thp=true"]).guest.thp  # the guest's page size is its own
    swept = []
    for name in experiment_names():  # every experiment that sweeps kernel=2008 still runs, every job of it
        spec = yaml.safe_load((resources.files("mmnsim.conf") / "experiment" / f"{name}.yaml").read_text())
        if "2008" in str(spec["hydra"]["sweeper"]["params"].get("kernel", "")):
            check_overrides(["-m", f"+experiment={name}"])
            swept.append(name)
    assert swept


def test_one_disk_serialises_a_guests_swap_ins_zram_spreads_them_over_its_vcpus():
    tiny = ("kernel='2008'", "guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64",
            "workload.accesses=20000")  # fmt: skip
    sim, serial = run(*tiny)
    assert sim.costs.swap_serial and sim.tenants[0].clients[0].vcpus == 4
    _, spread = run(*tiny, "costs.swap_serial=false")
    assert serial["major_faults"] == spread["major_faults"] > 0  # the same run: only its time differs
    disk = serial["major_faults"] * sim.costs.swap_in_ns
    assert serial["sim_time_ns"] >= disk  # the vCPUs queue for the one disk
    assert spread["sim_time_ns"] < disk / 2  # spread over 4 vCPUs, as zram's are
    assert serial["stall_fraction"] > spread["stall_fraction"]
    assert not simulation().costs.swap_serial  # today's zram


# -- the unsafe strawman --


def test_unpinned_kvm_keeps_entries_to_frames_reclaim_freed_and_the_checks_count_what_the_guest_did():
    neighbour = "+processes=[{name: n, memory_mib: 16, node: 0, workload: {name: uniform, accesses: 200000}}]"
    sim, m = run("secondary.mode=unpinned", "engine.check_accesses=true", neighbour)
    kvm = sim.tenants[0].secondary
    assert not sim.tenants[0].mm.chain.subscribers() and m["pins_acquired"] == 0 and m["swap_outs"] > 0
    assert m["invalidations"] == 0 and m["pages_zapped"] == 0  # nobody told KVM
    assert sim.violations_expected
    assert m["stale_reads"] > 0 and m["stale_writes"] > 0 and m["foreign_writes"] > 0
    assert m["foreign_writes"] <= m["stale_writes"]
    assert m["integrity_violations"] > 0 and m["invariant_violations"] > 0  # the neighbour's data was overwritten
    assert kvm.mapped_pages() > 0
    _, safe = run("secondary.mode=notifier", "engine.check_accesses=true", neighbour)
    assert safe["stale_reads"] == safe["stale_writes"] == safe["invariant_violations"] == 0


def test_the_2008_kernel_has_no_oom_reaper_the_victims_exit_frees_its_memory():
    hog = "processes=[{name: hog, memory_mib: 8, node: 0, workload: {name: uniform, accesses: 3000000}}]"
    no_swap = ("host.swap_mib=0", "guest.memory_mib=64", "host.memory_mib=48", hog)
    sim, m = run("kernel='2008'", *no_swap)
    assert m["oom_kills"] == 1 and sim.tenants[0].killed and sim.tenants[0].mm.exited
    assert m["oom_reaped_pages"] == 0 and m["invalidations_refused"] == 0  # nothing non-blockable raised
    assert sim.tenants[0].secondary.mapped_pages() == 0  # exit_mmap's release zapped KVM
    _, today = run(*no_swap)
    assert today["oom_reaped_pages"] > 0
