"""The ``mmnsim`` command: a Hydra app running one simulation per job.

Before Hydra starts anything, the command composes the config for every value of every sweep and checks
it (``load_settings``), so that a misspelled key, an unknown plugin or a bad value is reported in one
line naming the key and what is accepted, with exit status 2, before any job runs or writes a file.
"""

import atexit
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

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
from .config import ConfigError
from .discovery import CONF_PATH_ENV, Registry, plugin_manager
from .entry import Terminated, console_script, interrupted_signal, on_sigterm
from .notifier import PluginError
from .output import (
    FAILED,
    SUMMARY,
    check_writable,
    clear_results,
    disk_error,
    summary_text,
    up_to_date,
    write_bytes_atomic,
    write_failure,
    write_results,
)
from .progress import ProgressBar
from .settings import load_settings
from .simulation import InvariantViolation, Simulation
from .sweeplock import LOCK, SWEEP_PID, SweepBusy, SweepLock, exit_with_parent
from .traces import TraceError

CONFIG_MODULE = "mmnsim.conf"
EXIT_VIOLATIONS = 3  # a run (or a sweep's job) violated an invariant, without engine.allow_violations
VIOLATIONS = "violations.txt"  # a job's violation messages, for the end of a multirun
log = logging.getLogger("mmnsim")
hydrafix.install()  # Hydra's own files written whole, its errors in one line (in the sweep and its workers)
LIST_GROUPS = ("policies",)  # config groups whose value is a list of options
MAX_KEY = 200  # longer keys are no key of mmnsim's (and Hydra would try to open a file of that name)


# Config groups whose options are named by numbers (``kernel=2008``): Hydra reads a bare number as an int,
# which it refuses as a group option, so the command line quotes them before Hydra parses it.
NUMBERED_GROUPS = ("kernel",)


def quote_numbered_options(argv: list[str]) -> list[str]:
    """``kernel=2008`` -> ``kernel='2008'``, ``kernel=2008,6.x`` -> ``kernel='2008','6.x'``; others as given."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in NUMBERED_GROUPS and value and not any(c in value for c in "'\"()[]{}"):
            value = ",".join(f"'{v}'" for v in value.split(","))
        out.append(f"{key}{eq}{value}")
    return out


@console_script("mmnsim", sigterm=False)  # a single run handles SIGTERM in _app; a sweep's is Hydra's
def main() -> None:
    sys.argv[1:] = quote_numbered_options(sys.argv[1:])
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as exc:
        print(f"mmnsim: {exc}", file=sys.stderr)
        sys.exit(2)
    _app()


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def _app(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    outdir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per log line
    if multirun:
        exit_with_parent()
        if up_to_date(outdir, cfg):
            with contextlib.suppress(OSError):  # an earlier sweep's failure of this job, since redone
                (outdir / FAILED).unlink(missing_ok=True)
            print(f"up to date (same config and code), not run again: {outdir}")
            return
    bar = None if multirun else ProgressBar()  # parallel jobs would draw over each other
    sigterm = signal.getsignal(signal.SIGTERM)
    if not multirun:
        on_sigterm()  # one line, as for Ctrl-C (run in the main thread: Hydra's run mode)
    try:
        clear_results(outdir)  # an earlier run's results must not pass for this one's
        sim = Simulation(cfg)
        metrics = sim.run(progress=bar, teardown=True)
        write_results(outdir, cfg, metrics, sim.timeseries_rows())
    except (KeyboardInterrupt, Terminated) as exc:
        if multirun:
            raise
        signum = interrupted_signal(exc)
        print(f"mmnsim: interrupted ({signum.name}); {outdir} holds no results of this run: run it again",
              file=sys.stderr)  # fmt: skip
        sys.exit(128 + signum)
    except Exception as exc:
        if multirun:  # the other jobs go on; this one leaves failed.json, and FailedJobs fails the sweep
            _record_failure(outdir, cfg, exc)
            return
        if isinstance(exc, OSError):
            log.error("%s", disk_error(exc))
            print(f"mmnsim: {disk_error(exc)}", file=sys.stderr)
            sys.exit(1)
        if not isinstance(exc, ConfigError | PluginError | InvariantViolation | TraceError):
            raise
        log.error("%s", exc)
        print(f"mmnsim: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if bar is not None:
            bar.close()
        if not multirun:  # as it was, for a caller in the same process (a test, a script)
            signal.signal(signal.SIGTERM, sigterm)
    for message in sim.violation_messages[:5]:
        log.warning("invariant violated: %s", message)
    print(summary_text(metrics))
    print(f"results: {outdir}")
    (outdir / VIOLATIONS).unlink(missing_ok=True)  # from an earlier run of this job
    # The results stay written; the unpinned strawman's violations are its point, not a failure.
    if metrics["invariant_violations"] and not (sim.engine.allow_violations or sim.violations_expected):
        write_bytes_atomic(("\n".join(sim.violation_messages) + "\n").encode(), outdir / VIOLATIONS)
        if not multirun:
            first = sim.violation_messages[0]
            print(f"mmnsim: {metrics['invariant_violations']:,} invariant violations (first: {first}); "
                  "engine.allow_violations=true accepts them", file=sys.stderr)  # fmt: skip
            sys.exit(EXIT_VIOLATIONS)


def _record_failure(outdir: Path, cfg: DictConfig, exc: Exception) -> None:
    """Leave failed.json for a job that raised; if even that cannot be written (a full disk), say so in one
    line: FailedJobs counts the job as failed because it has no summary."""
    error = disk_error(exc) if isinstance(exc, OSError) else str(exc)
    try:
        log.error("job failed: %s (%s)", error, write_failure(outdir, cfg, exc))
    except OSError as again:
        log.error("job failed: %s; and %s", error, disk_error(again))
        print(f"mmnsim: job {outdir} failed: {error}", file=sys.stderr)


class SweepDir(Callback):
    """Before any job: a run's output directory can be written, and a sweep's directory is this sweep's
    alone (``SweepLock``, held to the end of the sweep); if not, one line and exit status 2. Workers of
    the sweep learn its pid, to exit when it is gone (``exit_with_parent``)."""

    lock: SweepLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_writable(Path(config.hydra.run.dir))
        except OSError as exc:
            print(f"mmnsim: {disk_error(exc)}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.lock = SweepLock(Path(config.hydra.sweep.dir))
        try:
            self.lock.acquire()
        except SweepBusy as exc:
            print(f"mmnsim: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:
            print(f"mmnsim: {disk_error(exc)}", file=sys.stderr)
            sys.exit(2)
        atexit.register(self.lock.release)  # when a callback after this one exits, or on an error
        os.environ[SWEEP_PID] = str(os.getpid())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()


class FailedJobs(Callback):
    """At the end of a multirun, name this sweep's jobs that failed, with their errors, and exit with status
    1; the other jobs' results are complete, and ``mmnsim-report`` reads them (and lists the failures).
    This sweep's jobs are those whose ``.hydra/config.yaml`` was written since the sweep started: a
    ``failed.json`` left in the directory by an earlier sweep does not count."""

    since_ns: int = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # the file system's clock, as for the jobs' files
            self.since_ns = (Path(config.hydra.sweep.dir) / LOCK).stat().st_mtime_ns
        except OSError:
            self.since_ns = time.time_ns()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted(
            p.parent.parent for p in sweep.rglob(".hydra/config.yaml") if p.stat().st_mtime_ns >= self.since_ns
        )
        errors = {}
        violated = []
        for job in jobs:
            if (job / VIOLATIONS).is_file():
                violated.append(job / VIOLATIONS)
            if (job / FAILED).is_file():
                try:
                    errors[job] = json.loads((job / FAILED).read_text())["error"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    errors[job] = f"failed.json unreadable ({exc})"
            elif not (job / SUMMARY).is_file():
                errors[job] = "no results and no failed.json (see the job's log)"
        for path in violated:  # listed first: a failed job, below, sets the exit status
            first = path.read_text().partition("\n")[0]
            print(f"mmnsim: invariant violated in {path.parent}: {first}", file=sys.stderr)
        if not errors:
            if violated:
                sys.exit(EXIT_VIOLATIONS)
            return
        print(f"mmnsim: {len(errors)} of {len(jobs)} jobs failed; the others' results are in {sweep}:", file=sys.stderr)
        for job, error in errors.items():
            print(f"  {job}: {error}", file=sys.stderr)
        sys.exit(1)


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
        for i, values in enumerate(lists.values()):
            for alternative in values[1:]:
                load_settings(_compose([*first[:i], alternative, *first[i + 1 :]]), registry)
        if args.multirun:
            _check_job_dirs(base, list(lists.values()), hydra_first)


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


def _check_job_dirs(cfg: DictConfig, lists: list[list[str]], hydra_overrides: list[str]) -> None:
    """Each job of the sweep gets its own directory: ``hydra.sweep.subdir`` resolved for every job (as
    Hydra's launcher resolves it, with the job's number and overrides) gives distinct paths."""
    raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
    if raw in UNIQUE_SUBDIRS:
        return
    seen: dict[str, tuple[int, list[str]]] = {}
    for num, job in enumerate(itertools.product(*lists)):
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
                f"both write {cfg.hydra.sweep.dir}/{subdir}; each job needs its own directory (the default "
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
