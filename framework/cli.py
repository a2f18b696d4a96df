"""The ``mmnsim`` command: a Hydra app running one simulation per job.

Before Hydra starts anything, the command composes the config for every value of every sweep and checks
it (``load_settings``), so that a misspelled key, an unknown plugin or a bad value is reported in one
line naming the key and what is accepted, with exit status 2, before any job runs or writes a file.
"""

import atexit
import contextlib
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
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
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
log = logging.getLogger("mmnsim")


def main() -> None:
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
        for job in jobs:
            if (job / FAILED).is_file():
                try:
                    errors[job] = json.loads((job / FAILED).read_text())["error"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    errors[job] = f"failed.json unreadable ({exc})"
            elif not (job / SUMMARY).is_file():
                errors[job] = "no results and no failed.json (see the job's log)"
        if not errors:
            return
        print(f"mmnsim: {len(errors)} of {len(jobs)} jobs failed; the others' results are in {sweep}:", file=sys.stderr)
        for job, error in errors.items():
            print(f"  {job}: {error}", file=sys.stderr)
        sys.exit(1)


def check_overrides(argv: list[str]) -> None:
    """Compose and check the config for each value of each sweep; raise ConfigError if one is bad."""
    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(
            [o for o in args.overrides if not o.lstrip("+~").startswith("hydra")]
        )
    except HydraException as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    first, alternatives = [], []
    for i, o in enumerate(parsed):
        if o.is_sweep_override() and not args.multirun:
            raise ConfigError(f"{o.input_line}: a sweep runs one job per value; add -m (--multirun)")
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
            overrides = first if i is None else [*first[:i], alternative, *first[i + 1 :]]
            load_settings(_compose(overrides), registry)


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose("config", overrides=overrides)
    except HydraException as exc:
        raise ConfigError(_explain(exc, overrides)) from None


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
    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group = missing.rpartition("/")[0]
        options = exc.options or GlobalHydra.instance().config_loader().get_group_options(group)
        return f"{group}: unknown option '{missing.rpartition('/')[2]}'; accepted: {', '.join(options)}"
    return str(exc).splitlines()[0]
