"""What a run leaves in its output directory, and where it came from.

* ``summary.parquet``: one row, the run's flattened config (``host.memory_mib``, ...), every metric its
  configuration declares (``declared_metrics``: 0 when nothing happened, so every run of a configuration
  has the same columns), and its provenance (``mmnsim_version``, ``git_commit``, ``code_hash``,
  ``config_hash``, ``settings_hash``; ``seed`` is in the config). At the end of a sweep, its summaries
  (and time series) are given one schema (``unify_schemas``), so that a glob reads them as one table.
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
import stat
import subprocess
import traceback
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import DictConfig, OmegaConf

from .metrics import Metric, summary_metrics

SUMMARY = "summary.parquet"
TIMESERIES = "timeseries.parquet"
FAILED = "failed.json"


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain data, without Hydra's own node, an experiment's report and sensitivity
    sections (which say how to tabulate the sweep, not how to simulate) or the costs' ``sources`` (their
    ranges and citations: documentation, so not summary columns, and a corrected citation leaves the
    ``config_hash`` and so the results up to date)."""
    if "hydra" in cfg:  # not resolved: a sweep's own config has no job number for hydra.sweep.subdir
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    data = OmegaConf.to_container(cfg, resolve=True)
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


def settings_hash(cfg: DictConfig) -> str:
    """``config_hash`` without the seed: equal for the seed replicates of one setting, which
    ``mmnsim-report`` averages, and different for runs that must not be averaged together."""
    data = {k: v for k, v in run_config(cfg).items() if k != "seed"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
            "config_hash": config_hash(cfg), "settings_hash": settings_hash(cfg)}  # fmt: skip


def read_parquet(path: Path, **kwargs: Any) -> pl.DataFrame:
    """``pl.read_parquet`` of a file Python opens: polars would encode the path's name as UTF-8, which under
    a locale of another encoding is not the name on disk (a directory named with non-ASCII letters)."""
    with open(path, "rb") as f:
        return pl.read_parquet(f, **kwargs)


def read_parquet_schema(path: Path) -> dict[str, pl.DataType]:
    """``pl.read_parquet_schema`` of a file Python opens (see ``read_parquet``)."""
    with open(path, "rb") as f:
        return pl.read_parquet_schema(f)


def up_to_date(outdir: Path, cfg: DictConfig) -> bool:
    """Whether ``outdir`` already holds this config's complete results from this code: the summary, and the
    time series when the config records one, both readable and both stamped with this config and code."""
    want = {"config_hash": config_hash(cfg), "code_hash": code_hash(cfg)}
    names = [SUMMARY, TIMESERIES] if cfg.engine.timeseries else [SUMMARY]
    for name in names:
        try:
            stamps = read_parquet(outdir / name, columns=list(want)).unique().rows(named=True)
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
        for path in (outdir / name, outdir / f".{name}.tmp"):
            if path.is_symlink() or path.is_file():  # a directory or a device node there is never removed
                path.unlink(missing_ok=True)


def disk_error(exc: OSError) -> str:
    """An OSError from writing results, in one line: the path, the error and its errno name."""
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    if isinstance(exc, NotAFile):
        return f"cannot write {exc.filename}: {reason}"
    return f"cannot write {exc.filename or 'results'}: {reason}{f' ({code})' if code else ''}"


def make_dir(path: Path) -> None:
    """``mkdir -p``, where a file in the way is "Not a directory" (ENOTDIR), as for a file on the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None


def check_writable(outdir: Path) -> None:
    """Create ``outdir`` and write a page to a file in it (a full disk fails too), or raise OSError naming
    ``outdir`` (before a run, not after)."""
    make_dir(outdir)
    probe = outdir / f".mmnsim-probe-{os.getpid()}"
    try:
        probe.write_bytes(bytes(4096))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(outdir)) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def write_failure(outdir: Path, cfg: DictConfig, exc: BaseException) -> Path:
    """Record a job that raised, in place of its results."""
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / FAILED
    record = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), **provenance(cfg)}
    write_bytes_atomic(json.dumps(record, indent=2).encode(), path)
    return path


def declared_metrics(cfg: DictConfig) -> dict[str, Metric]:
    """The metric columns of this config's summary (``mmnsim.metrics.summary_metrics``): the framework's,
    and those of the components it selects and of the hook-only plugins, as the installed plugins declare
    them."""
    from .discovery import Registry, plugin_manager

    pm = plugin_manager()
    registry = Registry.from_plugins(pm)
    classes = {(kind, name): registry.classes.get(kind, {}).get(name) for kind, name in selected_components(cfg)}
    secondaries = [cls for (kind, _), cls in classes.items() if cls is not None and kind == "secondary"]
    others = [cls for (kind, _), cls in classes.items() if cls is not None and kind != "secondary"]
    return summary_metrics(secondaries, [*others, *pm.get_plugins()])


def summary_frame(cfg: DictConfig, metrics: dict[str, float], extra: dict[str, Any] | None = None,
                  prov: dict[str, str] | None = None) -> pl.DataFrame:  # fmt: skip
    """The summary's one row: the flattened config, every metric the config declares (0, or "" for text,
    where nothing was reported: the same columns for every run of a configuration) and the provenance;
    ``extra``: more provenance (the real twin's machine.* columns). The real twin's run leaves a metric it
    cannot observe null, never 0 (``mmnsim.metrics.REAL_UNOBSERVED``)."""
    observed = cfg.get("backend", "sim") != "real"
    zeros = {name: m.type() if observed else None for name, m in declared_metrics(cfg).items() if name not in metrics}
    row = {**flatten(run_config(cfg)), **metrics, **zeros, **(prov or provenance(cfg)), **(extra or {})}
    return pl.DataFrame([row])


def unify_schemas(paths: list[Path]) -> int:
    """Give the parquet files ``paths`` (a sweep's summaries, or its time series) one schema, as polars'
    multi-file read (``pl.read_parquet("sweep/*/summary.parquet")``), ``scan_parquet`` and DuckDB need:
    the same columns, in one order, of one type. A column a file lacks (another configuration's setting
    or component's metric) is added as null; a setting given as an integer in one run and a float in
    another becomes the common type. Files that cannot be read are left alone. Returns how many were
    rewritten (atomically: ``write_atomic``)."""
    schemas = {}
    for path in paths:
        try:
            schemas[path] = read_parquet_schema(path)
        except Exception:  # noqa: BLE001 - truncated or garbage: mmnsim-report lists it
            continue
    if len(schemas) < 2:
        return 0
    target = pl.concat([pl.DataFrame(schema=s) for s in schemas.values()], how="diagonal_relaxed").schema
    rewritten = 0
    for path, schema in schemas.items():
        if list(schema.items()) == list(target.items()):
            continue
        frame = read_parquet(path)
        frame = frame.select(
            pl.col(name).cast(dtype) if name in schema else pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in target.items()
        )
        write_atomic(frame, path)
        rewritten += 1
    return rewritten


def write_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` whole or not at all. Polars encodes into memory and Python writes the
    file, so a full disk is an OSError naming the path and ENOSPC, not polars' "Invalid thrift" error."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    write_bytes_atomic(buffer.getbuffer(), path)


def write_bytes_atomic(data: bytes | memoryview, path: Path) -> None:
    """Write ``data`` to ``path`` whole or not at all: to a temporary name beside it, renamed into place; on
    an error the temporary file is removed and the OSError names ``path``. What ``path`` must be:
    ``output_path``."""
    path = output_path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # the file the user knows, not its temp


class NotAFile(OSError):
    """An output path names something that is not a regular file (a directory, a device node, a fifo, a
    socket): writing there would replace it. An input error, not a disk error."""


def output_path(path: str | os.PathLike) -> Path:
    """Where a file written to ``path`` by rename goes: ``path``, or the file a symbolic link names. Raises
    ``NotAFile`` if something other than a regular file is there, so that no rename ever replaces a
    directory or a device node (``/dev/null``), and no write blocks on a fifo."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise NotAFile(errno.EEXIST, f"{kind} is there, not a regular file; give a file name", str(path))
    return path


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def write_results(outdir: Path, cfg: DictConfig, metrics: dict[str, float], rows: list[dict],
                  extra: dict[str, Any] | None = None) -> None:  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / FAILED).unlink(missing_ok=True)  # an earlier attempt's failure
    (outdir / SUMMARY).unlink(missing_ok=True)  # the summary is last, and only beside its own time series
    prov = provenance(cfg)
    summary = summary_frame(cfg, metrics, extra, prov)
    timeseries = pl.DataFrame(rows) if rows else None
    if timeseries is not None:
        timeseries = timeseries.with_columns(pl.lit(v).alias(k) for k, v in prov.items())
        write_atomic(timeseries, outdir / TIMESERIES)
    else:
        (outdir / TIMESERIES).unlink(missing_ok=True)
    write_atomic(summary, outdir / SUMMARY)


def summary_text(metrics: dict[str, float]) -> str:
    """A few lines a person reads after a run."""
    m = metrics
    compiling = m.get("compile_seconds", 0.0)
    running = m["wall_seconds"] - compiling  # numba's compilation left out of the speed
    wall = f"wall {m['wall_seconds']:.2f} s" + (f", {compiling:.1f} s of it compiling" if compiling >= 0.05 else "")
    speed = f" ({m['accesses'] / running / 1e6:.1f} M accesses/s)" if running >= 0.001 else ""
    lines = [
        f"accesses {m['accesses']:,} completed, {m['accesses_failed']:,} failed, in {m['ticks']} ticks; "
        f"simulated {m['sim_time_ns'] / 1e9:.3f} s, {wall}{speed}",
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
