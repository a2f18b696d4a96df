"""What a run leaves in its output directory, and where it came from.

* ``summary.parquet``: one row, the run's flattened config (``host.memory_mib``, ...), every metric, and
  its provenance (``mmnsim_version``, ``git_commit``, ``code_hash``, ``config_hash``; ``seed`` is in the
  config).
* ``timeseries.parquet``: one row per tick, cumulative counters and gauges.
* ``failed.json``, instead, for a job that raised: the error, its traceback and the provenance.

The three are one unit. Before a run, ``clear_results`` removes what an earlier run left in the directory
(another config's results, or a run killed midway); each file is written to a temporary name and renamed
into place, the summary last, so a crashed or interrupted run leaves no half-written file and no summary
without its time series. A job is up to date (``up_to_date``) when its summary and time series are both
there, readable, and carry the job's ``config_hash`` and ``code_hash``: a sweep started again in the same
directory skips it.

A write that fails (a full disk, a read-only or missing directory, a path that is a file) raises
``OSError`` with the path and errno; ``disk_error`` says it in one line.
"""

import contextlib
import errno
import hashlib
import importlib
import io
import json
import os
import subprocess
import traceback
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import DictConfig, OmegaConf

SUMMARY = "summary.parquet"
TIMESERIES = "timeseries.parquet"
FAILED = "failed.json"


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain data, without Hydra's own node, an experiment's report and sensitivity
    sections (which say how to tabulate the sweep, not how to simulate) or the costs' ``sources`` (their
    ranges and citations: documentation, so not summary columns, and a corrected citation leaves the
    ``config_hash`` and so the results up to date)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    data.pop("report", None)
    data.pop("sensitivity", None)
    return _without_sources(data)


def _without_sources(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_sources(v) for k, v in data.items() if k != "sources"}
    if isinstance(data, list):
        return [_without_sources(v) for v in data]
    return data


def config_hash(cfg: DictConfig) -> str:
    text = json.dumps(run_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists become JSON text so every run has the same column types."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def git_commit() -> str:
    """The commit of the source tree this package runs from, '-dirty' if modified; 'unknown' if none."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def code_hash(cfg: DictConfig) -> str:
    """A hash of the code and YAML a run executes: the mmnsim package, its built-in plugins and conf, and
    the installed plugin packages (entry points) the run uses: those registering a component ``cfg``
    selects, and those registering none (hook-only plugins run in every simulation). Installing or
    editing a plugin package a run does not use leaves its hash alone. Unlike the commit, it sees
    uncommitted edits."""
    return _hash_packages(("mmnsim", "mmnsim.plugins", "mmnsim.conf", *_plugin_packages(cfg)))


def selected_components(cfg: DictConfig) -> set[tuple[str, str]]:
    """(kind, name) of every component ``cfg`` names: the guests', processes' and devices' secondary MMUs
    and workloads, and the policies."""
    data = run_config(cfg)
    found = {("policy", str(name)) for name in (data.get("policies") or {})}

    def client(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for kind, key in (("secondary", "secondary"), ("workload", "workload")):
            if isinstance(node.get(key), dict) and node[key].get("name") is not None:
                found.add((kind, str(node[key]["name"])))
        for device in node.get("devices") or []:
            client(device)

    client(data)
    client(data.get("guest"))
    for proc in data.get("processes") or []:
        client(proc)
    return found


def _plugin_packages(cfg: DictConfig) -> list[str]:
    from .discovery import plugin_manager

    wanted = selected_components(cfg)
    packages = []
    for impl in plugin_manager().hook.register_components.get_hookimpls():
        if impl.plugin_name.startswith("builtin:"):
            continue
        try:
            components = list(impl.function() or ())
        except Exception:  # noqa: BLE001 - a broken plugin is reported when it is loaded, not here
            continue
        if not components or any((c.kind, c.name) in wanted for c in components):
            packages.append(getattr(impl.plugin, "__name__", type(impl.plugin).__module__).split(".")[0])
    return sorted(set(packages))


@cache
def _hash_packages(names: tuple[str, ...]) -> str:
    files: set[Path] = set()
    for name in names:
        try:
            spec = importlib.import_module(name).__spec__
        except Exception:  # noqa: BLE001 - a broken plugin is reported when it is loaded, not here
            continue
        if spec.submodule_search_locations:  # a package: everything in it
            for root in spec.submodule_search_locations:
                files.update(q for q in Path(root).rglob("*") if q.suffix in (".py", ".yaml") and q.is_file())
        elif spec.origin:
            files.add(Path(spec.origin))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def provenance(cfg: DictConfig) -> dict[str, str]:
    try:
        version = metadata.version("mmnsim")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"mmnsim_version": version, "git_commit": git_commit(), "code_hash": code_hash(cfg),
            "config_hash": config_hash(cfg)}  # fmt: skip


def up_to_date(outdir: Path, cfg: DictConfig) -> bool:
    """Whether ``outdir`` already holds this config's complete results from this code: the summary, and the
    time series when the config records one, both readable and both stamped with this config and code."""
    want = {"config_hash": config_hash(cfg), "code_hash": code_hash(cfg)}
    names = [SUMMARY, TIMESERIES] if cfg.engine.timeseries else [SUMMARY]
    for name in names:
        try:
            stamps = pl.read_parquet(outdir / name, columns=list(want)).unique().rows(named=True)
        except Exception:  # noqa: BLE001 - missing, unreadable or from an older version: run again
            return False
        if stamps != [want]:
            return False
    return True


def clear_results(outdir: Path) -> None:
    """Remove what an earlier run left in ``outdir`` (its results, its failure, temporary files of a run
    killed midway), the summary first: a run interrupted from here on leaves no results that look whole."""
    if not outdir.is_dir():
        return
    for name in (SUMMARY, TIMESERIES, FAILED):
        (outdir / name).unlink(missing_ok=True)
        (outdir / f".{name}.tmp").unlink(missing_ok=True)


def disk_error(exc: OSError) -> str:
    """An OSError from writing results, in one line: the path, the error and its errno name."""
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    return f"cannot write {exc.filename or 'results'}: {reason}{f' ({code})' if code else ''}"


def make_dir(path: Path) -> None:
    """``mkdir -p``, where a file in the way is "Not a directory" (ENOTDIR), as for a file on the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None


def check_writable(outdir: Path) -> None:
    """Create ``outdir`` and a file in it, or raise OSError naming the path (before a run, not after)."""
    make_dir(outdir)
    probe = outdir / f".mmnsim-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def write_failure(outdir: Path, cfg: DictConfig, exc: BaseException) -> Path:
    """Record a job that raised, in place of its results."""
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / FAILED
    record = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), **provenance(cfg)}
    _write_bytes(json.dumps(record, indent=2).encode(), path)
    return path


def summary_frame(cfg: DictConfig, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> pl.DataFrame:
    """The summary's one row; ``extra``: more provenance (the real twin's machine.* columns)."""
    row = {**flatten(run_config(cfg)), **metrics, **provenance(cfg), **(extra or {})}
    return pl.DataFrame([row])


def write_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` whole or not at all. Polars encodes into memory and Python writes the
    file, so a full disk is an OSError naming the path and ENOSPC, not polars' "Invalid thrift" error."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    _write_bytes(buffer.getbuffer(), path)


def _write_bytes(data: bytes | memoryview, path: Path) -> None:
    """Write to a temporary name and rename into place; on an error, remove the temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # the file the user knows, not its temp


def write_results(outdir: Path, cfg: DictConfig, metrics: dict[str, float], rows: list[dict],
                  extra: dict[str, Any] | None = None) -> None:  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / FAILED).unlink(missing_ok=True)  # an earlier attempt's failure
    (outdir / SUMMARY).unlink(missing_ok=True)  # the summary is last, and only beside its own time series
    summary = summary_frame(cfg, metrics, extra)
    timeseries = pl.DataFrame(rows) if rows else None
    if timeseries is not None:
        prov = provenance(cfg)
        timeseries = timeseries.with_columns(pl.lit(v).alias(k) for k, v in prov.items())
        write_atomic(timeseries, outdir / TIMESERIES)
    else:
        (outdir / TIMESERIES).unlink(missing_ok=True)
    write_atomic(summary, outdir / SUMMARY)


def summary_text(metrics: dict[str, float]) -> str:
    """A few lines a person reads after a run."""
    m = metrics
    lines = [
        f"accesses {m['accesses']:,} completed, {m['accesses_failed']:,} failed, in {m['ticks']} ticks; "
        f"simulated {m['sim_time_ns'] / 1e9:.3f} s, "
        f"wall {m['wall_seconds']:.2f} s ({m['accesses'] / max(m['wall_seconds'], 1e-9) / 1e6:.1f} M accesses/s)",
        f"faults: secondary {m['secondary_faults']:,} (retries {m['fault_retries']:,}), "
        f"minor {m['minor_faults']:,}, major {m['major_faults']:,}; guest stall {100 * m['stall_fraction']:.1f}%",
        f"pinned pages: now {m['pinned_pages']:,}, peak {m['pinned_pages_peak']:,}; swap out {m['swap_outs']:,}, "
        f"in {m['swap_ins']:,}; OOM events {m['oom_events']:,} (in {m['oom_ticks']:,} ticks), "
        f"failed allocations {m['alloc_failures']:,}",
        f"notifier: invalidations {m['invalidations']:,}, pages zapped {m['pages_zapped']:,}, "
        f"TLB flushes {m['tlb_flushes']:,} ({m['flush_cost_ns'] / 1e6:.2f} ms)",
        f"invariant violations: {m['invariant_violations']:,}",
    ]
    if m.get("stale_reads") or m.get("stale_writes"):  # engine.check_accesses, e.g. secondary.mode=unpinned
        lines.append(f"accesses through stale entries: {m['stale_reads']:,} reads of freed or reused memory, "
                     f"{m['stale_writes']:,} writes ({m['foreign_writes']:,} into other tenants' pages)")  # fmt: skip
    return "\n".join(lines)
