"""Whose results a directory holds: a sweep directory belongs to one sweep, a run directory to one run.

A sweep records who it is in its directory before its first job (``.mmnsim-sweep.json``: every job's
overrides in job order, the ``hydra.sweep.subdir`` pattern that names their directories, the code hash,
when it started). Started again with the same overrides and code it is the same sweep: it resumes, and
skips the jobs that are up to date. Another sweep into that directory (other overrides, fewer or more
jobs, other code) stops before any job, with one line saying what is there and how to go on: another
``hydra.sweep.dir``, or ``--reuse``, which removes those results first. So a directory never holds two
sweeps' results: no row of a table averages them, and a smaller sweep leaves none of a bigger one's
jobs behind to be reported as its own. A single run's directory follows the same rule, by the config
and code hashes its results are stamped with: the same run again replaces its results, another stops.

Besides, a directory a live sweep or run is writing into is locked (``mmnsim.sweeplock``): a sweep
checks the directories below its own and a run the directories above its own, so neither starts
writing beside another one.
"""

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .output import FAILED, SUMMARY, TIMESERIES, code_hash, config_hash, read_parquet, write_bytes_atomic
from .sweeplock import LOCK, holder_if_locked

RECORD = ".mmnsim-sweep.json"
VIOLATIONS = "violations.txt"  # a job's invariant violation messages
RESULTS = (SUMMARY, TIMESERIES, FAILED)
JOB_STATUS = ".mmnsim-job.json"  # how a sweep's job ended (mmnsim.progress writes and reads it)
MAX_DEPTH = 4  # how far below a sweep directory its jobs' directories are looked for
# What a job's directory holds (Hydra's .hydra/ and job log, mmnsim's results): --reuse removes these
# and nothing else, so a directory that also holds other files keeps them.
JOB_FILES = (*RESULTS, VIOLATIONS, JOB_STATUS, *(f".{name}.tmp" for name in RESULTS))
SWEEP_FILES = (RECORD, "multirun.yaml", "results.parquet", "results.csv")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
REUSE = "--reuse"


class DirTaken(Exception):
    """The directory holds another sweep's or run's results, or a live sweep or run is writing into it."""


@dataclass
class SweepIdentity:
    """What makes two sweeps the same sweep: the same jobs in the same directories, and the same code."""

    jobs: list[list[str]] | None  # each job's overrides, in job order (None: a sweeper that decides as it goes)
    overrides: list[str]  # the command line's (what a sweeper other than Hydra's basic one works from)
    subdir: str  # hydra.sweep.subdir, unresolved: how job numbers become directories
    code_hash: str

    def same_jobs(self, record: dict) -> bool:
        mine = self.jobs if self.jobs is not None else self.overrides
        theirs = record.get("jobs") if self.jobs is not None else record.get("overrides")
        return mine == theirs and record.get("subdir") == self.subdir

    def describe(self) -> str:
        return _describe({"jobs": self.jobs, "overrides": self.overrides})


def sweep_identity(config: DictConfig) -> SweepIdentity:
    """The identity of the sweep ``config`` (the multirun's config, as its callbacks get it) describes."""
    task = [str(o) for o in config.hydra.overrides.task]
    subdir = str(OmegaConf.to_container(config.hydra.sweep).get("subdir"))
    return SweepIdentity(job_overrides(config), task, subdir, code_hash(config))


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, in job order, as Hydra's basic sweeper will run them (its ``params`` from the
    config, an experiment's, then the command line's); None for another sweeper."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *config.hydra.overrides.task])
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:  # noqa: BLE001 - Hydra's sweeper will say what is wrong; the record keeps the overrides
        return None


def swept_keys(jobs: list[list[str]]) -> list[str]:
    """The keys whose values differ between the jobs (what tells one job from another), in job order."""
    per_job = [dict(o.partition("=")[::2] for o in job) for job in jobs]
    keys = dict.fromkeys(k for job in per_job for k in job)
    return [k for k in keys if len({job.get(k) for job in per_job}) > 1]


def _describe(record: dict) -> str:
    """A sweep in a few words: its job count and its overrides (``4 jobs: seed=0,1 secondary.mode=pin,notifier``)."""
    jobs = record.get("jobs")
    overrides = " ".join(record.get("overrides") or []) or "no overrides"
    return f"{len(jobs)} jobs: {overrides}" if isinstance(jobs, list) else overrides


def read_record(sweep_dir: Path) -> dict | None:
    """The sweep record in ``sweep_dir``; None if there is none, {} if it cannot be read."""
    try:
        record = json.loads((sweep_dir / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(sweep_dir: Path, identity: SweepIdentity, started: str | None = None) -> None:
    """The sweep's record: who it is, and when it first started (``started``, kept when it resumes)."""
    try:
        version = metadata.version("mmnsim")
    except metadata.PackageNotFoundError:
        version = "unknown"
    record = {"jobs": identity.jobs, "overrides": identity.overrides, "subdir": identity.subdir,
              "code_hash": identity.code_hash, "started": started or time.strftime("%Y-%m-%d %H:%M:%S"),
              "host": socket.gethostname(), "pid": os.getpid(), "mmnsim_version": version}  # fmt: skip
    write_bytes_atomic(json.dumps(record, indent=1).encode(), sweep_dir / RECORD)


def _walk(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """``root`` and the directories under it, at most ``max_depth`` levels down, hidden ones not entered: a
    sweep directory's jobs are there (``hydra.sweep.subdir``), and a sweep into ``.`` does not walk a home."""
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        yield here
        depth = len(here.relative_to(root).parts)
        dirnames[:] = [] if depth >= max_depth else sorted(d for d in dirnames if not d.startswith("."))


def job_dirs(root: Path) -> list[Path]:
    """The run or job directories at or under ``root``: those holding Hydra's ``.hydra/config.yaml``."""
    return [d for d in _walk(root) if (d / ".hydra" / "config.yaml").is_file()]


def _results_in(root: Path) -> list[Path]:
    """Job directories under ``root`` and result files at its top: what another sweep or run left."""
    found = [d for d in job_dirs(root) if d != root]
    found += [root / name for name in RESULTS if (root / name).is_file()]
    return found


def remove_results(root: Path) -> None:
    """What ``--reuse`` removes: every job directory's results, Hydra files and log (the directory itself if
    that empties it), and the sweep's record and tables; other files are left."""
    for job in job_dirs(root):
        for name in JOB_FILES:
            (job / name).unlink(missing_ok=True)
        for log in job.glob("*.log"):
            log.unlink(missing_ok=True)
        if job != root:
            shutil.rmtree(job / ".hydra", ignore_errors=True)
            with contextlib.suppress(OSError):  # not empty: something else lives there
                job.rmdir()
    for name in (*RESULTS, VIOLATIONS, JOB_STATUS, *SWEEP_FILES):
        (root / name).unlink(missing_ok=True)


def _advice(kind: str) -> str:
    option = "hydra.sweep.dir" if kind == "sweep" else "hydra.run.dir"
    return f"to keep them, use another {option}; to replace them, add {REUSE} (removes them first)"


def claim_sweep_dir(sweep_dir: Path, identity: SweepIdentity, reuse: bool) -> str:
    """Make ``sweep_dir`` this sweep's, before any job: 'resume' (it holds this sweep's results: the jobs
    that are up to date are skipped), 'new', or 'reused' (another's results, removed: ``reuse``). Otherwise
    raise DirTaken saying what is there and how to go on. Call it holding the sweep's lock."""
    _check_locks_below(sweep_dir)
    record = read_record(sweep_dir)
    found = _results_in(sweep_dir)
    if record and identity.same_jobs(record) and record.get("code_hash") == identity.code_hash:
        state = "resume"
    elif not found:
        state = "new"
    elif reuse:
        remove_results(sweep_dir)
        state = "reused"
    elif record and identity.same_jobs(record):
        raise DirTaken(f"{sweep_dir} holds this sweep's results from other code (code_hash "
                       f"{record.get('code_hash')}, this code {identity.code_hash}, started {record.get('started')}); "
                       f"{_advice('sweep')}")  # fmt: skip
    elif record:
        raise DirTaken(f"{sweep_dir} holds another sweep's results ({_describe(record)}; code_hash "
                       f"{record.get('code_hash')}, started {record.get('started')}); this sweep: "
                       f"{identity.describe()}; {_advice('sweep')}")  # fmt: skip
    else:
        jobs = sum(1 for f in found if f.is_dir())
        what = ", ".join(x for x in (f"{jobs} job directories" if jobs else "",
                                     ", ".join(f.name for f in found if f.is_file())) if x)  # fmt: skip
        raise DirTaken(f"{sweep_dir} holds results that are not this sweep's ({what}; no record of the sweep "
                       f"that wrote them); {_advice('sweep')}")  # fmt: skip
    write_record(sweep_dir, identity, record.get("started") if state == "resume" else None)
    return state


def claim_run_dir(run_dir: Path, cfg: DictConfig, reuse: bool) -> None:
    """Before a single run: ``run_dir`` holds no results but this run's own (the same config and code,
    which it replaces), or, with ``reuse``, they are removed; else DirTaken saying what is there."""
    _check_locks_above(run_dir)
    if not run_dir.is_dir():
        return
    found = _results_in(run_dir)
    if (run_dir / RECORD).is_file() or any(f.is_dir() for f in found):
        what = f"a sweep's results ({len([f for f in found if f.is_dir()])} job directories)"
    elif found:
        stamps = _stamps(run_dir)
        mine = {"config_hash": config_hash(cfg), "code_hash": code_hash(cfg)}
        if stamps == [mine]:
            return  # this run's own results: it runs again and replaces them
        if len(stamps) == 1 and stamps[0]["config_hash"] == mine["config_hash"]:
            what = f"this run's results from other code (code_hash {stamps[0]['code_hash']}, now {mine['code_hash']})"
        else:
            what = f"another run's results ({_overrides_text(run_dir)})"
    else:
        return  # no results (a run that stopped before writing any): nothing to mix
    if not reuse:
        raise DirTaken(f"{run_dir} holds {what}; {_advice('run')}")
    remove_results(run_dir)


def _stamps(run_dir: Path) -> list[dict]:
    """The (config_hash, code_hash) pairs of the results at the top of ``run_dir``; an unreadable file
    counts as another run's."""
    stamps = []
    for name in RESULTS:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            if name == FAILED:
                record = json.loads(path.read_text())
                rows = [{"config_hash": record["config_hash"], "code_hash": record["code_hash"]}]
            else:
                rows = read_parquet(path, columns=["config_hash", "code_hash"]).unique().rows(named=True)
        except Exception:  # noqa: BLE001 - unreadable, or from an older version
            rows = [{"config_hash": "?", "code_hash": "?"}]
        stamps += [r for r in rows if r not in stamps]
    return stamps


def _overrides_text(run_dir: Path) -> str:
    try:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return "its overrides unknown"
    return " ".join(map(str, overrides)) if overrides else "no overrides"


def _check_locks_below(sweep_dir: Path) -> None:
    """A live run or sweep writing into a directory under ``sweep_dir`` (a run left in the background)."""
    if not sweep_dir.is_dir():
        return
    own = sweep_dir / LOCK
    for lock in (d / LOCK for d in _walk(sweep_dir)):
        if lock != own and lock.exists() and (holder := holder_if_locked(lock)) is not None:
            raise DirTaken(f"{lock.parent} is in use by another {_holder_text(holder)}; wait for it to end, or use "
                           "another hydra.sweep.dir")  # fmt: skip


def _check_locks_above(run_dir: Path) -> None:
    """A live sweep (or run) writing into a directory above ``run_dir``."""
    for parent in Path(os.path.abspath(run_dir)).parents:
        if (holder := holder_if_locked(parent / LOCK)) is not None:
            raise DirTaken(f"{run_dir} is inside {parent}, in use by another {_holder_text(holder)}; wait for it to "
                           "end, or use another hydra.run.dir")  # fmt: skip


def _holder_text(holder: dict) -> str:
    return (f"{holder.get('what', 'sweep')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})")  # fmt: skip
