"""The out-of-tree plugin packages under examples/: installed with pip, found through their entry points,
run in a sweep; and the plugin guide, whose code is the examples' own and whose hook list is the spec's."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import cli
from mmnsim import apidoc
from mmnsim.hookspecs import FrameworkHooks, NotifierOps

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("iommu_sva", "ksm", "balloon", "proactive_reclaim")
GUIDE = ROOT / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The example packages pip-installed into a private folder; the environment that puts it on the path
    (installing into the test environment itself would change what every other test sees). Each is built
    from a copy, so that setuptools' build/ and egg-info folders stay out of the checkout."""
    target = tmp_path_factory.mktemp("site")
    sources = tmp_path_factory.mktemp("src")
    for name in EXAMPLES:
        shutil.copytree(ROOT / "examples" / name, sources / name,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), *(str(sources / name) for name in EXAMPLES)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {"PYTHONPATH": str(target)}


def test_installed_examples_are_listed_with_their_hooks(installed, tmp_path):
    exe = Path(sys.executable).with_name("mmnsim-plugins")
    out = subprocess.run([str(exe)], capture_output=True, text=True, env={**os.environ, **installed}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[1]: line for line in out.stdout.splitlines()[1:]}
    sva = r"secondary\s+iommu_sva\s+entry point iommu_sva\s+mmnsim_iommu_sva\s+arch_invalidate_secondary_tlbs$"
    assert re.match(sva, rows["iommu_sva"])
    assert re.match(r"policy\s+ksm\s+entry point ksm\s+mmnsim_ksm\s+collect_metrics, host_tick$", rows["ksm"])
    balloon = r"policy\s+balloon\s+entry point balloon\s+mmnsim_balloon\s+collect_metrics, host_tick$"
    assert re.match(balloon, rows["balloon"])
    proactive = r"policy\s+proactive_reclaim\s+entry point proactive_reclaim\s+mmnsim_proactive_reclaim\s+"
    assert re.match(proactive + "collect_metrics, host_tick$", rows["proactive_reclaim"])


def test_a_sweep_with_both_examples_runs_and_reports_their_metrics(installed, tmp_path):
    out = cli("-m", "secondary=kvm,iommu_sva", "secondary.mode=notifier", "policies=[swap,ksm]",
              "policies.ksm.pages_to_scan=20000", "workload.boot_writes=false", "guest.memory_mib=32",
              "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=300000", "engine.accesses_per_tick=16384",
              "hydra.sweep.dir=sweep", cwd=tmp_path, env=installed)  # fmt: skip
    assert out.returncode == 0, out.stderr
    runs = {r["secondary.name"]: r for r in (pl.read_parquet(p).row(0, named=True)
                                             for p in (tmp_path / "sweep").rglob("summary.parquet"))}  # fmt: skip
    assert set(runs) == {"kvm", "iommu_sva"}
    for name, run in runs.items():
        assert run["invariant_violations"] == 0, name
        assert run["ksm_full_scans"] >= 2 and run["ksm_merges"] > 0 and run["pages_sharing"] > 0, name
        assert run["cow_ksm"] > 0, name  # the guest wrote to merged pages, and got copies
    sva = runs["iommu_sva"]
    assert sva["iommu_sva.tlb_flushes"] > 0 and sva["iommu_sva.secondary_faults"] > 0  # I/O page faults
    assert sva.get("iommu_sva.pages_zapped", 0) == 0  # no table of its own: it never zaps
    assert runs["kvm"]["kvm.pages_zapped"] > 0


def test_an_installed_plugins_device_given_inline_gets_its_yaml_defaults(installed, tmp_path):
    """guest.devices and processes[i].secondary compose an installed plugin's YAML, as secondary=NAME does
    (before, only built-in YAML files were read for them: "guest.devices[0].secondary.mode: missing")."""
    device = "{secondary: {name: iommu_sva}, workload: {name: uniform, accesses: 20000}}"
    out = cli(f"guest.devices=[{device}]", "guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=20000",
              "hydra.run.dir=run", cwd=tmp_path, env=installed)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = pl.read_parquet(tmp_path / "run" / "summary.parquet").row(0, named=True)
    assert run["iommu_sva.accesses"] > 0 and run["invariant_violations"] == 0


def test_pinned_guest_memory_is_never_merged(installed, tmp_path):
    out = cli("secondary.mode=pin", "policies=[swap,ksm]", "policies.ksm.pages_to_scan=20000",
              "workload.boot_writes=false", "guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=200000",
              "engine.accesses_per_tick=16384", "hydra.run.dir=run", cwd=tmp_path, env=installed)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = pl.read_parquet(tmp_path / "run" / "summary.parquet").row(0, named=True)
    assert run["ksm_pages_scanned"] > 0 and run["ksm_merges"] == 0 and run["pages_sharing"] == 0


BALLOON = ("policies=[swap,balloon]", "guest.memory_mib=64", "host.memory_mib=48", "host.swap_mib=128",
           "workload.accesses=400000", "engine.accesses_per_tick=65536")  # fmt: skip


def test_the_balloon_returns_unused_guest_pages_through_invalidations(installed, tmp_path):
    out = cli(*BALLOON, "secondary.mode=notifier", "hydra.run.dir=run", cwd=tmp_path, env=installed)
    assert out.returncode == 0, out.stderr
    run = pl.read_parquet(tmp_path / "run" / "summary.parquet").row(0, named=True)
    assert run["invariant_violations"] == 0
    assert run["balloon_returned"] > 1000 and run["balloon_off_pinned"] == 0
    assert 0 < run["balloon_pages"] <= run["balloon_returned"]  # some were taken back (refaulted)
    # MADV_DONTNEED is a CLEAR invalidation per page, which KVM answers by zapping: beyond reclaim's own
    assert run["invalidations_clear"] >= run["swap_outs"] + run["balloon_returned"]
    assert run["kvm.pages_zapped"] >= run["balloon_returned"]


def test_the_balloon_stays_off_when_guest_memory_is_pinned(installed, tmp_path):
    # host.oom=fail: the pinned guest does not fit, and without the OOM killer it runs on, failing accesses
    out = cli(*BALLOON, "secondary.mode=pin", "host.oom=fail", "hydra.run.dir=run", cwd=tmp_path, env=installed)
    assert out.returncode == 0, out.stderr
    run = pl.read_parquet(tmp_path / "run" / "summary.parquet").row(0, named=True)
    assert run["invariant_violations"] == 0
    assert run["balloon_returned"] == 0 and run["balloon_off_pinned"] > 0


# No race windows: a window's reclaim evicts too (kswapd while a fault sleeps), and these tests count what
# proactive reclaim alone evicts.
PROACTIVE = ("policies=[swap,proactive_reclaim]", "guest.memory_mib=256", "host.memory_mib=512", "host.swap_mib=256",
             "workload.accesses=2000000", "engine.accesses_per_tick=65536", "engine.race_window=0")  # fmt: skip


def test_proactive_reclaim_swaps_out_cold_guest_memory_and_counts_its_refaults(installed, tmp_path):
    # The host has room for the guest: only proactive reclaim evicts, so every swap-in is a refault it caused
    out = cli(*PROACTIVE, "secondary.mode=notifier", "hydra.run.dir=run", cwd=tmp_path, env=installed)
    assert out.returncode == 0, out.stderr
    run = pl.read_parquet(tmp_path / "run" / "summary.parquet").row(0, named=True)
    assert run["invariant_violations"] == 0
    assert run["proactive_rounds"] == -(-run["ticks"] // 4)  # tick 0, 4, 8, ...: every_ticks=4
    assert run["proactive_reclaimed"] == run["swap_outs"] > 0 and run["kswapd_wakeups"] == 0
    assert run["proactive_reclaimed"] <= run["proactive_rounds"] * 0.05 * 65536  # a round takes at most its share
    assert 0 < run["proactive_refaults"] == run["major_faults"] <= run["proactive_reclaimed"]
    assert run["kvm.pages_zapped"] >= run["proactive_reclaimed"]  # a CLEAR per page, which KVM answers by zapping
    # charge_reclaim at the costs group's rates: 50 ns per page examined (at least each one written), 3000 per write
    assert run["host_cpu_ns"] >= run["proactive_cpu_ns"] >= run["proactive_reclaimed"] * (50 + 3000)
    assert run["proactive_pinned_skipped"] == 0


def test_proactive_reclaim_leaves_pinned_guest_memory_and_says_so(installed, tmp_path):
    out = cli(*PROACTIVE, "secondary.mode=pin", "hydra.run.dir=run", cwd=tmp_path, env=installed)
    assert out.returncode == 0, out.stderr
    run = pl.read_parquet(tmp_path / "run" / "summary.parquet").row(0, named=True)
    assert run["invariant_violations"] == 0
    assert run["proactive_reclaimed"] == run["swap_outs"] == run["major_faults"] == 0
    assert run["proactive_pinned_skipped"] >= (run["proactive_rounds"] - 1) * 65536  # all of it, after boot


def test_building_the_examples_leaves_nothing_in_the_checkout(installed):
    left = [p for name in EXAMPLES for p in (ROOT / "examples" / name).iterdir()
            if p.name == "build" or p.name.endswith(".egg-info")]  # fmt: skip
    assert not left, f"build leftovers in the checkout: {left}"


def test_an_example_config_error_names_the_key(installed, tmp_path):
    out = cli("secondary=iommu_sva", "secondary.mode=pin", "workload.accesses=1000", cwd=tmp_path, env=installed)
    assert out.returncode == 2
    assert "an SVA device shares the CPU page tables: mode must be notifier" in out.stderr


def test_the_guide_shows_the_examples_real_code():
    """Every code block under an ``<!-- from PATH -->`` marker is a verbatim slice of that file."""
    text = GUIDE.read_text()
    blocks = re.findall(r"<!-- from (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for path, code in blocks:
        assert code in (ROOT / path).read_text(), f"docs/plugins.md: the block from {path} is not in that file"


def test_the_guide_covers_every_hook_of_the_spec():
    text = GUIDE.read_text()
    hooks = [n for cls in (NotifierOps, FrameworkHooks) for n in vars(cls) if not n.startswith("_")]
    missing = [h for h in hooks if f"`{h}`" not in text]
    assert not missing, f"docs/plugins.md does not mention {missing}"


def test_the_api_reference_is_generated_from_the_docstrings():
    assert (ROOT / "docs" / "api.md").read_text() == apidoc.markdown(), (
        "docs/api.md is stale: run `python -m mmnsim.apidoc > docs/api.md`"
    )


def test_the_guide_lists_every_operation_with_its_event():
    text = GUIDE.read_text()
    ops = ["mm.munmap", "mm.madvise_dontneed", "mm.discard", "mm.mprotect", "mm.exit", "mm.invalidate",
           "swap_out", "scan_frames", "referenced", "sim.migrate", "merge_pages", "split_huge_pages",
           "collapse_huge_page", "compact", "secondary.invalidate_self"]  # fmt: skip
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for op in ops:
        assert any(row.startswith(f"| `{op}(") for row in rows), f"docs/plugins.md: no row for {op}"
    for name in ("sim.rng", "sim.charge", "stall(ns)", "watermark(node=None)", "is_pinned", "pin_mode",
                 "declared_metrics", "migrations_refused"):  # fmt: skip
        assert name in text, f"docs/plugins.md does not mention {name}"
