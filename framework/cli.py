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
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, RunError
from .discovery import Registry, plugin_manager
from .notifier import PluginError
from .output import (
    FAILED,
    SUMMARY,
    check_writable,
    clear_results,
    disk_error,
    summary_text,
    up_to_date,
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
    try:
        clear_results(outdir)  # an earlier run's results must not pass for this one's
        if cfg.get("backend") == "real":  # the real twin (docs/real.md): imported only when asked for
            _run_real(cfg, outdir, hc, bar)
            return
        sim = Simulation(cfg)
        metrics = sim.run(progress=bar, teardown=True)
        write_results(outdir, cfg, metrics, sim.timeseries_rows())
    except Exception as exc:
        if multirun:  # the other jobs go on; this one leaves failed.json, and FailedJobs fails the sweep
            _record_failure(outdir, cfg, exc)
            return
        if isinstance(exc, OSError):
            log.error("%s", disk_error(exc))
            print(f"mmnsim: {disk_error(exc)}", file=sys.stderr)
            sys.exit(1)
        if isinstance(exc, RunError):  # the real twin could not finish: one line, status 1
            log.error("%s", exc)
            print(f"mmnsim: {exc}", file=sys.stderr)
            sys.exit(1)
        if not isinstance(exc, ConfigError | PluginError | InvariantViolation | TraceError):
            raise
        log.error("%s", exc)
        print(f"mmnsim: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if bar is not None:
            bar.close()
    for message in sim.violation_messages[:5]:
        log.warning("invariant violated: %s", message)
    print(summary_text(metrics))
    print(f"results: {outdir}")
    (outdir / VIOLATIONS).unlink(missing_ok=True)  # from an earlier run of this job
    # The results stay written; the unpinned strawman's violations are its point, not a failure.
    if metrics["invariant_violations"] and not (sim.engine.allow_violations or sim.violations_expected):
        (outdir / VIOLATIONS).write_text("\n".join(sim.violation_messages) + "\n")
        if not multirun:
            first = sim.violation_messages[0] if sim.violation_messages else "see the counters in the summary"
            print(f"mmnsim: {metrics['invariant_violations']:,} invariant violations (first: {first}); "
                  "engine.allow_violations=true accepts them", file=sys.stderr)  # fmt: skip
            sys.exit(EXIT_VIOLATIONS)


def _run_real(cfg: DictConfig, outdir: Path, hc: Any, bar: ProgressBar | None) -> None:
    """A backend=real job: the real twin's run (mmnsim.real.run), its results in the simulator's layout. Ctrl-C,
    SIGTERM or SIGHUP: one line (everything the run created is removed by then), the signal's exit status."""
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
    if bar is not None:
        bar.close()
    print(real.summary_text(result.metrics))
    print(f"results: {outdir}")


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
    """Compose and check the config for each value of each sweep; raise ConfigError if one is bad."""
    args, _ = get_args_parser().parse_known_args(quote_numbered_options(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    ours = [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(ours)
        hydra_parsed = OverridesParser.create().parse_overrides([o for o in args.overrides if o not in ours])
    except HydraException as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    # Hydra's own keys (launcher, sweep dir) are checked once, with the first job, so that a bad one is an
    # input error here rather than Hydra's exit status 1 later; a sweep over them is left to Hydra.
    hydra_first = [o.input_line for o in hydra_parsed if not o.is_sweep_override()]
    first, alternatives = [], []
    for i, o in enumerate(parsed):
        if len(o.get_key_element()) > MAX_KEY:  # Hydra would look for a file of that name
            raise ConfigError(f"{o.get_key_element()[:40]}...: unknown key ({len(o.get_key_element())} characters)")
        if o.is_sweep_override() and not args.multirun:
            raise ConfigError(_sweep_hint(o))
        if o.is_sweep_override():
            key = o.get_key_element()
            values = list(o.sweep_string_iterator())
            first.append(f"{key}={values[0]}")
            alternatives += [(i, f"{key}={v}") for v in values[1:]]
        else:
            first.append(o.input_line)
    registry = Registry.from_plugins(plugin_manager())
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for i, alternative in [(None, None), *alternatives]:
            if i is None:
                load_settings(_compose([*first, *hydra_first], with_hydra=True), registry)
                continue
            load_settings(_compose([*first[:i], alternative, *first[i + 1 :]]), registry)
        for job in _real_jobs(parsed):  # what the machine can run depends on the combination: every one
            load_settings(_compose(job), registry)


def _real_jobs(parsed: list[Override]) -> list[list[str]]:
    """Every job of the sweep that runs the real twin (backend=real), as its overrides: the real twin refuses
    combinations (docs/real.md), so each is checked, not only each value."""
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]  # fmt: skip
    if not any(c.partition("=")[2] == "real" for o, cs in zip(parsed, choices, strict=True)
               if o.get_key_element() == "backend" for c in cs):  # fmt: skip
        return []
    return [list(job) for job in itertools.product(*choices) if "backend=real" in job]


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
