"""The ``mmnsim`` command: a Hydra app running one simulation per job.

Before Hydra starts anything, the command composes the config for every value of every sweep and checks
it (``load_settings``), so that a misspelled key, an unknown plugin or a bad value is reported in one
line naming the key and what is accepted, with exit status 2, before any job runs or writes a file.
"""

import atexit
import contextlib
import copy
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from . import hydrafix
from .config import ConfigError, RunError
from .discovery import CONF_PATH_ENV, Registry, plugin_manager
from .entry import Terminated, console_script, interrupted_signal
from .notifier import PluginError
from .output import (
    FAILED,
    SUMMARY,
    TIMESERIES,
    NotAFile,
    check_writable,
    clear_results,
    disk_error,
    summary_text,
    unify_schemas,
    up_to_date,
    write_bytes_atomic,
    write_failure,
    write_results,
)
from .progress import CompileNotice, JobOutcome, ProgressBar, SweepProgress, kernels_cached, write_job_status
from .resultdir import (
    REUSE,
    VIOLATIONS,
    DirTaken,
    SweepIdentity,
    claim_run_dir,
    claim_sweep_dir,
    job_dirs,
    job_overrides,
    sweep_identity,
    swept_keys,
)
from .settings import load_settings
from .simulation import InvariantViolation, Simulation
from .sweeplock import LOCK, SWEEP_PID, SweepBusy, SweepLock, exit_with_parent
from .traces import TraceError

CONFIG_MODULE = "mmnsim.conf"
EXIT_VIOLATIONS = 3  # a run (or a sweep's job) violated an invariant, without engine.allow_violations
log = logging.getLogger("mmnsim")
hydrafix.install()  # Hydra's own files written whole, its errors in one line (in the sweep and its workers)
LIST_GROUPS = ("policies",)  # config groups whose value is a list of options
MAX_KEY = 200  # longer keys are no key of mmnsim's (and Hydra would try to open a file of that name)


# Config groups whose options are named by numbers (``kernel=2008``, ``kernel=6.1``): Hydra reads a bare
# number as an int or a float, which it refuses as a group option, so every command that takes overrides
# quotes them before Hydra parses them (``main``, ``check_overrides``, ``_compose``, mmnsim-bench).
NUMBERED_GROUPS = ("kernel",)


def quote_numbered_options(argv: list[str]) -> list[str]:
    """``kernel=2008`` -> ``kernel='2008'``, ``kernel=6.1,6.x`` -> ``kernel='6.1','6.x'``; others as given."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in NUMBERED_GROUPS and value and not any(c in value for c in "'\"()[]{}"):
            value = ",".join(f"'{v}'" for v in value.split(","))
        out.append(f"{key}{eq}{value}")
    return out


class _Session:
    """What this command is doing, for its callbacks and for the line Ctrl-C or SIGTERM prints."""

    reuse = False  # --reuse: another sweep's (or run's) results in the directory are removed first
    kind = ""  # "run" or "sweep", once Hydra has started it
    directory: Path | None = None
    identity: SweepIdentity | None = None
    state = ""  # the sweep directory was "new", is resumed ("resume"), or "reused"
    progress: SweepProgress | None = None

    @classmethod
    def interrupted(cls) -> str:
        """What Ctrl-C or SIGTERM interrupted, and what to run again (after ``mmnsim: interrupted (SIGINT): ``)."""
        if cls.kind == "sweep":
            done = len(cls.progress.outcomes) if cls.progress is not None else 0
            jobs = cls.identity.jobs if cls.identity is not None else None
            of = f" of {len(jobs)}" if jobs else ""
            return (f"the sweep into {cls.directory}, {done}{of} jobs finished; run the same command "
                    "again to resume (the finished jobs are not run again)")  # fmt: skip
        if cls.kind == "run":
            return f"the run into {cls.directory}, which wrote no results; run the same command again"
        return "before any run started"

    @classmethod
    def start(cls, reuse: bool) -> None:
        """A new command (a caller may run several in one process)."""
        cls.reuse, cls.kind, cls.directory, cls.identity, cls.state, cls.progress = reuse, "", None, None, "", None


# Ctrl-C and SIGTERM: one line (entry.console_script), saying which run or sweep and what to run again.
@console_script("mmnsim", interrupted=_Session.interrupted)
def main() -> None:
    argv = quote_numbered_options(sys.argv[1:])
    _Session.start(reuse=REUSE in argv)
    sys.argv[1:] = argv = [a for a in argv if a != REUSE]
    try:
        check_overrides(argv)
    except ConfigError as exc:
        print(f"mmnsim: {exc}", file=sys.stderr)
        sys.exit(2)
    hydrafix.overrides_checked = True  # Hydra need not compose every job again before launching it
    try:
        _app()
    except (KeyboardInterrupt, Terminated):
        if _Session.progress is not None:
            _Session.progress.abandon()  # the bar wiped, no closing line: the interrupted line says it
        raise


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def _app(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    outdir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per log line
    if multirun:
        exit_with_parent()
        _quiet_console()  # the sweep prints a line per job; the job's log file holds the rest
        job = {"num": int(hc.job.num), "overrides": [str(o) for o in hc.overrides.task]}
        if up_to_date(outdir, cfg):
            with contextlib.suppress(OSError):  # an earlier sweep's failure of this job, since redone
                (outdir / FAILED).unlink(missing_ok=True)
            log.info("up to date (same config and code), not run again: %s", outdir)
            write_job_status(outdir, **job, status="up to date")
            return
    bar = None if multirun else ProgressBar()  # parallel jobs would draw over each other
    notice = CompileNotice(log.info if multirun else bar.write)
    compiled = [0.0, 0.0]  # numba's compile seconds when the run's clock started, and at its last tick

    def progress(fraction: float) -> None:
        compiled[1] = notice.seconds  # wall_seconds ends right after the last tick: the teardown is not in it
        if bar is not None:
            bar(fraction)

    try:
        with notice:
            clear_results(outdir)  # an earlier run's results must not pass for this one's
            if cfg.get("backend") == "real":  # the real twin (docs/real.md): imported only when asked for
                _run_real(cfg, outdir, hc, bar, job if multirun else None)
                return
            sim = Simulation(cfg)
            compiled[:] = [notice.seconds, notice.seconds]
            metrics = sim.run(progress=progress, teardown=True)
        metrics["compile_seconds"] = compiled[1] - compiled[0]
        write_results(outdir, cfg, metrics, sim.timeseries_rows())
    except (KeyboardInterrupt, Terminated) as exc:
        if multirun and os.environ.get(SWEEP_PID) != str(os.getpid()):  # a worker process of the sweep
            os._exit(128 + interrupted_signal(exc))  # Ctrl-C reaches the sweep's process too, which says it
        if not multirun:  # none of its results kept (a time series without its summary): it wrote none
            with contextlib.suppress(OSError):
                clear_results(outdir)
        raise  # main()'s console_script says it in one line
    except Exception as exc:
        if multirun:  # the other jobs go on; this one leaves failed.json, and the sweep's end lists it
            write_job_status(outdir, **job, status="failed", error=_record_failure(outdir, cfg, exc))
            return
        if isinstance(exc, OSError):
            _fail(disk_error(exc), 1)
        if isinstance(exc, RunError):  # the real twin could not finish: one line, status 1
            _fail(str(exc), 1)
        if not isinstance(exc, ConfigError | PluginError | InvariantViolation | TraceError):
            raise
        _fail(str(exc), 2)
    finally:
        if bar is not None:
            bar.close()
    for message in sim.violation_messages[:5]:
        log.warning("invariant violated: %s", message)
    if multirun:  # the sweep's process prints the job's line
        log.info("%s", summary_text(metrics))
    else:
        print(summary_text(metrics))
        print(f"results: {outdir}")
    (outdir / VIOLATIONS).unlink(missing_ok=True)  # from an earlier run of this job
    # The results stay written; the unpinned strawman's violations are its point, not a failure.
    violated = metrics["invariant_violations"] and not (sim.engine.allow_violations or sim.violations_expected)
    first = sim.violation_messages[0] if sim.violation_messages else "see the counters in the summary"
    if violated:
        write_bytes_atomic(("\n".join(sim.violation_messages) + "\n").encode(), outdir / VIOLATIONS)
    if multirun:
        write_job_status(outdir, **job, status="violations" if violated else "ok", seconds=metrics["wall_seconds"],
                         compile_seconds=metrics["compile_seconds"], accesses=metrics["accesses"],
                         violations=metrics["invariant_violations"],
                         first=first if violated else "")  # fmt: skip
    elif violated:
        print(f"mmnsim: {metrics['invariant_violations']:,} invariant violations (first: {first}); "
              "engine.allow_violations=true accepts them", file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_VIOLATIONS)


def _run_real(cfg: DictConfig, outdir: Path, hc: Any, bar: ProgressBar | None, job: dict | None) -> None:
    """A backend=real job: the real twin's run (mmnsim.real.run), its results in the simulator's layout; ``job``:
    a sweep's job, which says how it ended as the simulator's do. Ctrl-C, SIGTERM or SIGHUP: one line
    (everything the run created is removed by then), the signal's exit status."""
    from .real import run as real  # the simulator never imports the twin

    try:
        result = real.run(cfg, real.run_id_of(hc.job.name, hc.job.get("num")), progress=bar)
    except KeyboardInterrupt as exc:  # RunInterrupted (SIGTERM, SIGHUP) is one too
        if bar is not None:
            bar.close()
        what = str(exc) or "stopped by SIGINT (Ctrl-C)"
        log.error("%s; everything the run created was removed", what)
        print(f"mmnsim: {what}; everything the run created was removed", file=sys.stderr)
        sys.exit(real.exit_status(exc))
    write_results(outdir, cfg, result.metrics, result.rows, extra=result.provenance)
    if job is not None:  # the sweep's process prints the job's line
        metrics = result.metrics
        write_job_status(outdir, **job, status="ok", seconds=metrics.get("wall_seconds", 0.0), compile_seconds=0.0,
                         accesses=metrics.get("accesses", 0), violations=0, first="")  # fmt: skip
        log.info("%s", real.summary_text(result.metrics))
        return
    if bar is not None:
        bar.close()
    print(real.summary_text(result.metrics))
    print(f"results: {outdir}")


def _fail(message: str, status: int) -> NoReturn:
    """A single run's error: once on the terminal (stderr), and in the run's log file."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"mmnsim: {message}", file=sys.stderr)
    sys.exit(status)


def _quiet_console() -> None:
    """A sweep's job logs to its log file only: lines from parallel jobs would interleave on the terminal."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


def _record_failure(outdir: Path, cfg: DictConfig, exc: Exception) -> str:
    """Leave failed.json for a job that raised, and return its error in one line; if even that cannot be
    written (a full disk), say so in one line: the sweep counts the job as failed, having no summary."""
    error = disk_error(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
    try:
        log.error("job failed: %s (%s)", error, write_failure(outdir, cfg, exc))
    except OSError as again:
        log.error("job failed: %s; and %s", error, disk_error(again))
        print(f"mmnsim: job {outdir} failed: {error}", file=sys.stderr)
    return error


class SweepDir(Callback):
    """Before any job: a run's or sweep's output directory can be written, nobody else is writing into it
    (``SweepLock``, held to the end), and it holds no other run's or sweep's results (``mmnsim.resultdir``:
    with ``--reuse`` they are removed); if not, one line and exit status 2. Workers of the sweep learn its
    pid, to exit when it is gone (``exit_with_parent``)."""

    lock: SweepLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        _Session.kind, _Session.directory = "run", run_dir
        self._take(run_dir, "run")
        _one_line_exit(lambda: claim_run_dir(run_dir, config, _Session.reuse), disk_status=1)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        _Session.kind, _Session.directory = "sweep", sweep_dir
        self._take(sweep_dir, "sweep")
        os.environ[SWEEP_PID] = str(os.getpid())
        _Session.identity = sweep_identity(config)
        _Session.state = _one_line_exit(lambda: claim_sweep_dir(sweep_dir, _Session.identity, _Session.reuse),
                                        disk_status=1)  # fmt: skip

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()

    def _take(self, directory: Path, what: str) -> None:
        """Create ``directory`` and lock it for this run or sweep, to its end (or exit)."""
        self.lock = SweepLock(directory, what=what)
        _one_line_exit(lambda: (check_writable(directory), self.lock.acquire()))
        atexit.register(self.lock.release)  # when a callback after this one exits, or on an error


def _one_line_exit(step: Callable[[], Any], disk_status: int = 2) -> Any:
    """``step()``; a directory in use, another's results or an unwritable path: one line, exit status 2. A
    disk error in a step that writes (the sweep's record, ``--reuse`` removing results) exits with
    ``disk_status``: 1, as for a full disk under Hydra's own files."""
    try:
        return step()
    except (SweepBusy, DirTaken) as exc:
        print(f"mmnsim: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"mmnsim: {disk_error(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, NotAFile) else disk_status)


class FailedJobs(Callback):
    """A sweep you can watch, and its end: a line saying what the sweep does, a bar across its jobs on a
    terminal and a line per finished job (``SweepProgress``); at the end, the summaries given one schema
    (``unify_schemas``) and one closing line: how many jobs, failed, with invariant violations, and the
    command for the table. Exit status 1 if a job failed (its ``failed.json`` says why; the other jobs'
    results are complete), else 3 if one violated an invariant. This sweep's jobs are those Hydra started
    since the sweep took its lock: a ``failed.json`` an earlier sweep left does not count."""

    since_ns: int = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:  # the file system's clock, as for the jobs' files
            self.since_ns = (sweep / LOCK).stat().st_mtime_ns
        except OSError:
            self.since_ns = time.time_ns()
        identity = _Session.identity
        jobs = identity.jobs if identity is not None else None
        keys = swept_keys(jobs) if jobs else []
        print(_sweep_header(config, sweep, jobs, keys), flush=True)
        default = jobs and identity.subdir == "${hydra.job.num}"  # job i in sweep/i: no need to look for them
        paths = [sweep / str(i) for i in range(len(jobs))] if default else None
        _Session.progress = SweepProgress(sweep, jobs, self.since_ns, keys, paths)
        _Session.progress.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        outcomes = _Session.progress.stop() if _Session.progress is not None else []
        jobs = _Session.identity.jobs if _Session.identity is not None else None
        for name in (SUMMARY, TIMESERIES):  # polars, DuckDB: a glob over the sweep reads as one table
            unify_schemas([d / name for d in job_dirs(sweep) if (d / name).is_file()])
        line, status = _closing_line(sweep, outcomes, len(jobs) if jobs else len(outcomes))
        print(line, file=sys.stderr if status else sys.stdout, flush=True)
        if status:
            sys.exit(status)


def _sweep_header(config: DictConfig, sweep: Path, jobs: list[list[str]] | None, keys: list[str]) -> str:
    """The sweep's first line: how many jobs, over what, where, how many at a time; resumed; compiling."""
    parts = [f"sweep: {len(jobs)} jobs" if jobs else "sweep", f"into {sweep}"]
    if jobs and keys:
        values = {k: list(dict.fromkeys(dict(o.partition("=")[::2] for o in job).get(k, "") for job in jobs))
                  for k in keys}  # fmt: skip
        parts.append("(" + " ".join(f"{k}={','.join(v)}" for k, v in values.items()) + ")")
    n_jobs = config.hydra.launcher.get("n_jobs") if "launcher" in config.hydra else None
    if isinstance(n_jobs, int) and n_jobs != 0 and jobs:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        parallel = n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)  # joblib: -1 is every core
        parts[-1] += f", {min(parallel, len(jobs))} at a time"
    notes = []
    if _Session.state == "resume" and job_dirs(sweep):
        notes.append("resuming: jobs whose results are up to date are not run again")
    if not kernels_cached():
        notes.append("the first jobs compile the numba kernels (about half a minute)")
    return " ".join(parts) + "".join(f"; {n}" for n in notes)


def _closing_line(sweep: Path, outcomes: list[JobOutcome], total: int) -> tuple[str, int]:
    """The sweep's last line, and its exit status: 1 if a job failed, 3 if one violated an invariant."""
    count = {s: sum(o.status == s for o in outcomes) for s in ("ok", "up to date", "violations", "failed")}
    count["failed"] += sum(o.status == "unfinished" for o in outcomes)
    parts = [f"{count['ok']} ok"] if count["ok"] or len(outcomes) == count["ok"] else []
    if count["up to date"]:
        parts.append(f"{count['up to date']} up to date (not run again)")
    if count["violations"]:
        parts.append(f"{count['violations']} with invariant violations (violations.txt)")
    if count["failed"]:
        parts.append(f"{count['failed']} failed (failed.json)")
    if total > len(outcomes):
        parts.append(f"{total - len(outcomes)} not run")
    status = 1 if count["failed"] or total > len(outcomes) else EXIT_VIOLATIONS if count["violations"] else 0
    line = f"{total} jobs: {', '.join(parts)}; the table: mmnsim-report {sweep}"
    return (f"mmnsim: {line}" if status else line), status


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else float("inf")


def check_overrides(argv: list[str]) -> None:
    """Compose and check the config for each value of each sweep (the command line's and the config's
    ``hydra.sweeper.params``), Hydra's flags and own keys, and that a sweep's jobs write to distinct
    directories; raise ConfigError if one is bad."""
    argv = quote_numbered_options(argv)
    args = _parse_flags(argv)
    _check_flags(args)
    if args.hydra_help or args.shell_completion or ((args.help or args.info) and not args.overrides):
        return
    ours = [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    theirs = [o for o in args.overrides if o not in ours]
    registry = Registry.from_plugins(plugin_manager())
    with _config_dir(args.config_dir), initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            parsed = parser.parse_overrides(ours)
            hydra_parsed = parser.parse_overrides(theirs)
        except HydraException as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        # Hydra's own keys (launcher, sweep dir) are checked once, with the first job, so that a bad one is
        # an input error here rather than Hydra's exit status 1 later; a sweep over them is left to Hydra.
        hydra_first = [o.input_line for o in hydra_parsed if not o.is_sweep_override()]
        lists = _value_lists(parsed, args.multirun)
        first = [values[0] for values in lists.values()]
        base = _compose([*first, *hydra_first], with_hydra=True)
        composed_from = list(first)
        load_settings(base, registry)
        _check_hydra_keys(base)
        _check_package(args, base)
        if args.multirun:  # the sweep's own parameters (an experiment's), replaced by the command line's
            params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
            try:
                from_config = _value_lists(parser.parse_overrides(params), True)
            except HydraException as exc:
                raise ConfigError(f"hydra.sweeper.params: {str(exc).splitlines()[0]}") from None
            lists = {**from_config, **lists}
            lists = {k: lists[k] for k in [*from_config, *(k for k in lists if k not in from_config)]}
            first = [values[0] for values in lists.values()]
        plain = _without_hydra(base) if first == composed_from else None  # (an experiment's params: composed)
        for i, values in enumerate(lists.values()):
            for alternative in values[1:]:
                cfg = _plain_variant(plain, parser, first[i], alternative) if plain is not None else None
                if cfg is None:
                    cfg = _compose([*first[:i], alternative, *first[i + 1 :]])
                load_settings(cfg, registry)
        for job in _real_jobs(lists):  # what the machine can run depends on the combination: every one
            load_settings(_compose(job), registry)
        if args.multirun:
            _check_job_dirs(_sweep_config(args.overrides), hydra_first)


def _without_hydra(cfg: DictConfig) -> DictConfig:
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.set_struct(plain, True)
    return plain


def _plain_variant(base: DictConfig, parser: OverridesParser, first: str, alternative: str) -> DictConfig | None:
    """The config ``_compose`` gives when ``alternative`` replaces ``first`` among the overrides ``base`` was
    composed from, without composing again, where that is certain: both set one scalar value (no config
    group, no +, ++ or ~, no mapping or list, which an override merges into what the defaults hold), so
    Hydra applies it last, by OmegaConf.update on the composed config (ConfigLoaderImpl
    ._apply_overrides_to_config). None where only composing can tell. A sweep over seeds checks each value in
    a few milliseconds instead of one composition each."""
    try:
        old, new = parser.parse_overrides([first, alternative])
    except HydraException:
        return None
    loader = GlobalHydra.instance().config_loader()
    for o in (old, new):
        if o.is_delete() or o.is_add() or o.is_force_add() or o.package is not None:
            return None
        if isinstance(o.value(), dict | list) or o.key_or_group != new.key_or_group:
            return None
        if loader.repository.group_exists(o.key_or_group.replace(".", "/")):
            return None
    cfg = copy.deepcopy(base)
    try:
        OmegaConf.update(cfg, new.key_or_group, new.value(), merge=True)
    except OmegaConfBaseException:
        return None  # composing says what is wrong, in its words
    return cfg


def _real_jobs(lists: dict[str, list[str]]) -> list[list[str]]:
    """Every job of the sweep that runs the real twin (backend=real), as its overrides: the real twin refuses
    combinations (docs/real.md), so each is checked, not only each value."""
    if "backend=real" not in lists.get("backend", []):
        return []
    return [list(job) for job in itertools.product(*lists.values()) if "backend=real" in job]


def _parse_flags(argv: list[str]) -> Any:
    """Hydra's command line parsed by Hydra's parser, whose errors (``--info nosuch``) are one line here."""
    parser = get_args_parser()

    def error(message: str) -> None:
        raise ConfigError(message)

    parser.error = error
    return parser.parse_args(argv)


def _check_package(args: Any, cfg: DictConfig) -> None:
    """``--cfg KIND --package P``: P is a node of what ``--cfg KIND`` prints."""
    package = args.package
    if not args.cfg or package in (None, "_global_"):
        return
    in_hydra = package.split(".")[0] == "hydra"
    if OmegaConf.select(cfg, package) is None or in_hydra != (args.cfg == "hydra") and args.cfg != "all":
        raise ConfigError(f"--package {package}: no such node in the config --cfg {args.cfg} prints")


def _check_flags(args: Any) -> None:
    """Hydra's command-line flags, in the combinations Hydra accepts (it raises, with a traceback, on the rest)."""
    flags = (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg), ("--info", args.info),
             ("--shell-completion", args.shell_completion))  # fmt: skip
    commands = [flag for flag, given in flags if given]
    if len(commands) > 1:
        raise ConfigError(f"{' and '.join(commands)}: give one of --run, --multirun (-m), --cfg, --info, "
                          "--shell-completion")  # fmt: skip
    if args.resolve and not (args.cfg or args.help):
        raise ConfigError("--resolve works with --cfg (or --help) only")
    if args.experimental_rerun is not None:
        raise ConfigError("--experimental-rerun: mmnsim keeps no pickled job config; run again with the overrides in "
                          "the job's .hydra/overrides.yaml")  # fmt: skip
    if args.config_path is not None or args.config_name is not None:
        raise ConfigError("--config-path/--config-name: mmnsim runs its own config; add a folder of config files "
                          "with --config-dir DIR (DIR/experiment/NAME.yaml for +experiment=NAME)")  # fmt: skip
    if args.config_dir is not None and not Path(args.config_dir).is_dir():
        raise ConfigError(f"--config-dir {args.config_dir}: not a directory")
    if args.hydra_help and args.overrides:
        raise ConfigError("--hydra-help prints Hydra's own help; it takes no overrides")
    if args.shell_completion and not any(o.startswith(("install=", "uninstall=", "query=")) for o in args.overrides):
        raise ConfigError("--shell-completion needs install=SHELL, uninstall=SHELL or query=SHELL (e.g. install=bash)")


@contextlib.contextmanager
def _config_dir(folder: str | None):
    """``--config-dir DIR`` on the search path of the checks too (Hydra adds it to the run's)."""
    if folder is None:
        yield
        return
    before = os.environ.get(CONF_PATH_ENV)
    os.environ[CONF_PATH_ENV] = os.pathsep.join(filter(None, [str(Path(folder).resolve()), before]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CONF_PATH_ENV, None)
        else:
            os.environ[CONF_PATH_ENV] = before


def _value_lists(parsed: list[Override], multirun: bool) -> dict[str, list[str]]:
    """Each key's values as overrides (``seed=0``, ``seed=1``), in order, as Hydra's basic sweeper lists
    them: a sweep gives several, any other override one."""
    lists: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        if len(key) > MAX_KEY:  # Hydra would look for a file of that name
            raise ConfigError(f"{key[:40]}...: unknown key ({len(key)} characters)")
        if not o.is_sweep_override():
            lists[key] = [o.input_line]
            continue
        if not multirun:
            raise ConfigError(_sweep_hint(o))
        if not o.is_discrete_sweep():
            raise ConfigError(f"{o.input_line}: the basic sweeper runs a list of values (a,b, range(0,4), "
                              "choice(a,b) or glob(*) for a config group), not an interval")  # fmt: skip
        try:
            values = list(o.sweep_string_iterator())
        except HydraException as exc:
            raise ConfigError(f"{o.input_line}: {str(exc).splitlines()[0]}") from None
        if not values:
            raise ConfigError(f"{o.input_line}: the sweep has no values; a sweep runs one job per value")
        lists[key] = [f"{key}={v}" for v in values]
    return lists


def _check_hydra_keys(cfg: DictConfig) -> None:
    """Hydra's own keys that compose but would fail the sweep: joblib's ``n_jobs=0``, the basic sweeper's
    ``max_batch_size`` of 0 or less (an assertion in Hydra)."""
    launcher = cfg.hydra.get("launcher") or {}
    if "n_jobs" in launcher and launcher.n_jobs == 0:
        raise ConfigError("hydra.launcher.n_jobs=0: the number of jobs run at once; accepted: 1, 2, ... or -1 for "
                          "every core (-2 all but one, ...)")  # fmt: skip
    batch = (cfg.hydra.get("sweeper") or {}).get("max_batch_size")
    if batch is not None and batch <= 0:
        raise ConfigError(f"hydra.sweeper.max_batch_size={batch}: jobs launched at a time; accepted: a positive "
                          "number, or null for all")  # fmt: skip


UNIQUE_SUBDIRS = ("${hydra.job.num}", "${hydra.job.id}")  # a job's number is its own


def _sweep_config(overrides: list[str]) -> DictConfig:
    """The config Hydra gives the sweeper of ``mmnsim -m OVERRIDES`` (composed as Hydra composes it)."""
    try:
        return GlobalHydra.instance().config_loader().load_configuration("config", overrides, RunMode.MULTIRUN)
    except (HydraException, OmegaConfBaseException) as exc:
        cause = str(exc.__cause__ or "").strip()
        raise ConfigError((cause or str(exc)).splitlines()[0]) from None


def _check_job_dirs(sweep_cfg: DictConfig, hydra_overrides: list[str]) -> None:
    """Each job of the sweep gets its own directory: ``hydra.sweep.subdir`` resolved for every job (as
    Hydra's launcher resolves it, with the job's number and overrides) gives distinct paths. The jobs are
    those the sweep itself will run and record (``resultdir.job_overrides``, one expansion for both)."""
    raw = OmegaConf.to_container(sweep_cfg.hydra.sweep, resolve=False).get("subdir")
    jobs = job_overrides(sweep_cfg)
    if raw in UNIQUE_SUBDIRS or jobs is None:  # None: another sweeper, which picks its jobs as it goes
        return
    seen: dict[str, tuple[int, list[str]]] = {}
    for num, job in enumerate(jobs):
        job_cfg = _compose([*job, *hydra_overrides], with_hydra=True)
        with open_dict(job_cfg):
            job_cfg.hydra.job.num = num
            job_cfg.hydra.job.id = f"{job_cfg.hydra.job.name}_{num}"
        HydraConfig.instance().set_config(job_cfg)  # for ${hydra:...} in the pattern
        try:
            subdir = os.path.normpath(str(OmegaConf.select(job_cfg, "hydra.sweep.subdir", throw_on_missing=True)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"hydra.sweep.subdir={raw}: {str(exc).splitlines()[0]}") from None
        if subdir in seen:
            other, other_job = seen[subdir]
            raise ConfigError(
                f"hydra.sweep.subdir={raw}: jobs {other} ({' '.join(other_job)}) and {num} ({' '.join(job)}) would "
                f"both write {sweep_cfg.hydra.sweep.dir}/{subdir}; each job needs its own directory (the default "
                "${hydra.job.num}, or a pattern that tells every job apart)"
            )
        seen[subdir] = (num, list(job))


def _sweep_hint(o: Override) -> str:
    """A sweep outside -m: say to add -m; a list-valued group (``policies=a,b``) was more likely meant as a list."""
    hint = f"{o.input_line}: a sweep runs one job per value; add -m (--multirun)"
    if o.key_or_group in LIST_GROUPS:
        values = ",".join(o.sweep_string_iterator())
        hint += f"; for one run with several {o.key_or_group}, write '{o.get_key_element()}=[{values}]'"
    return hint


def _check_groups(overrides: list[str]) -> None:
    """A config group takes an option's name (a list of names for ``policies``), not a number or a mapping."""
    loader = GlobalHydra.instance().config_loader()
    groups = set(loader.list_groups(""))
    for o in OverridesParser.create().parse_overrides(overrides):
        group = o.key_or_group
        if group not in groups or o.is_delete():
            continue
        value = o.value()
        names = value if isinstance(value, list) and group in LIST_GROUPS else [value]
        if not all(isinstance(v, str) for v in names):
            options = ", ".join(loader.get_group_options(group))
            what = "an option's name or a list of them" if group in LIST_GROUPS else "an option's name"
            raise ConfigError(f"{o.input_line}: {group} is a config group and takes {what}; accepted: {options}")


def _compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    overrides = quote_numbered_options(overrides)
    _check_groups(overrides)
    try:
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)
    except HydraException as exc:
        raise ConfigError(_explain(exc, overrides)) from None
    except (ValueError, TypeError, OSError, OmegaConfBaseException) as exc:  # Hydra's own, unwrapped
        raise ConfigError(f"{' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


def _explain(exc: HydraException, overrides: list[str]) -> str:
    """Hydra's composition error in one line, with the keys or options that would have been accepted."""
    cause = str(exc.__cause__ or "")
    if "not in struct" in cause:
        key = next((line.split("full_key:")[1].strip() for line in cause.splitlines() if "full_key:" in line), "")
        parent = key.rpartition(".")[0]
        loader = GlobalHydra.instance().config_loader()
        groups = [o for o in overrides if o.split("=")[0].lstrip("+~") in loader.list_groups("")]
        base = compose("config", overrides=groups)
        node = OmegaConf.select(base, parent) if parent else base
        accepted = ", ".join(str(k) for k in node if k != "hydra") if isinstance(node, DictConfig) else ""
        name = key.rpartition(".")[2]
        if parent in LIST_GROUPS and name in loader.get_group_options(parent):  # an option not in the list
            given = next((o for o in overrides if o.lstrip("+~").startswith(f"{key}.")), key)
            chosen = [str(k) for k in node] if isinstance(node, DictConfig) else []
            return (f"{given}: {name} is not in {parent} ({parent}=[{','.join(chosen)}]); add it to the list: "
                    f"'{parent}=[{','.join([*chosen, name])}]'")  # fmt: skip
        return f"{key}: unknown key; accepted keys {'under ' + parent if parent else 'at top level'}: {accepted}"
    if "No match in the defaults list" in str(exc):  # a group the default config does not list
        key = str(exc).split("'")[1] if "'" in str(exc) else ""
        given = next((o for o in overrides if o.split("=")[0] == key), f"{key}=NAME")
        return f"{given}: {key} is not in the default config; add it with '+{given}'"
    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group = missing.rpartition("/")[0]
        options = exc.options or GlobalHydra.instance().config_loader().get_group_options(group)
        return f"{group}: unknown option '{missing.rpartition('/')[2]}'; accepted: {', '.join(options)}"
    first = str(exc).splitlines()[0]
    return f"{first}: {cause.splitlines()[0]}" if cause.strip() else first
