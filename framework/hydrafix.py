"""Where mmnsim changes Hydra's own behaviour: its files written whole or not at all, its errors in one line.

Hydra (1.3) writes a job's ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` and a sweep's
``multirun.yaml`` in place: a full disk leaves them half-written, and its error, like any exception that
reaches Hydra's ``run_and_report``, is printed with a traceback. ``install()`` (called when ``mmnsim.cli``
is imported, in the sweep's process and in each worker) replaces

* ``hydra.core.utils._save_config`` (the ``.hydra/`` files) and the ``OmegaConf.save`` the basic sweeper
  calls for ``multirun.yaml`` by writes through ``output.write_bytes_atomic`` (a temporary file renamed
  into place, removed on an error; never onto a directory or a device node);
* ``Sweeper.validate_batch_is_legal``, which composes every job of a batch in the sweep's process before the
  launcher composes it again in its worker, by a no-op once ``mmnsim.cli.check_overrides`` has checked the
  command line (``overrides_checked``): that check composes each value of each sweep and checks its settings,
  which Hydra's does not. A sweep of N short jobs then composes N configs, not 2N, before its first job ends.
* ``hydra._internal.utils.run_and_report`` by one that prints one line: an ``OSError`` (a full or
  read-only disk under Hydra's files) as ``cannot write PATH: ...`` with exit status 1, Hydra's and
  OmegaConf's own errors (input it refuses) with exit status 2, anything else as an internal error with
  exit status 1 and the hint that ``HYDRA_FULL_ERROR=1`` prints the traceback (as Hydra's does).

tests/test_robust_files.py checks that the replaced names still exist, so that a Hydra upgrade that moves
them fails a test instead of silently restoring the old behaviour.
"""

import os
import sys
from pathlib import Path
from typing import Any

import hydra._internal.core_plugins.basic_sweeper as basic_sweeper
import hydra._internal.utils as hydra_utils
import hydra.core.utils as hydra_core_utils
import hydra.plugins.sweeper as hydra_sweeper
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .output import NotAFile, disk_error, write_bytes_atomic

EXIT_INPUT, EXIT_FAILED = 2, 1
_validate_batch = hydra_sweeper.Sweeper.validate_batch_is_legal
overrides_checked = False  # set by mmnsim.cli once check_overrides passed for this command line


def validate_batch_is_legal(self: Any, batch: Any) -> None:
    """Hydra's check that each job of a batch composes, unless mmnsim's own check already ran."""
    if not overrides_checked:
        _validate_batch(self, batch)


def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """Hydra's ``_save_config``, atomic: a job's ``.hydra/FILE`` is whole or absent."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(OmegaConf.to_yaml(cfg).encode("utf-8"), Path(output_dir) / filename)


class AtomicSaveOmegaConf(OmegaConf):
    """OmegaConf as the basic sweeper sees it: ``save`` to a path (``multirun.yaml``) is atomic."""

    @staticmethod
    def save(config: Any, f: Any, resolve: bool = False) -> None:
        if isinstance(f, str | os.PathLike):
            write_bytes_atomic(OmegaConf.to_yaml(config, resolve=resolve).encode("utf-8"), Path(f))
        else:
            OmegaConf.save(config, f, resolve=resolve)


def run_and_report(func: Any) -> Any:
    """Hydra's ``run_and_report`` (it runs the app's phases and reports what they raise), in one line."""
    try:
        return func()
    except Exception as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or isinstance(exc, BrokenPipeError):
            raise  # a closed pipe ends the command quietly (entry.console_script)
        if isinstance(exc, OSError):
            status = EXIT_INPUT if isinstance(exc, NotAFile) else EXIT_FAILED
            _exit(disk_error(exc), status)
        first = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, HydraException | OmegaConfBaseException):
            cause = exc.__cause__
            detail = (str(cause).strip().splitlines() or [""])[0] if cause is not None else ""
            _exit(f"{first}: {detail}" if detail and detail not in first else first or type(exc).__name__, EXIT_INPUT)
        _exit(f"internal error: {type(exc).__name__}: {first} (HYDRA_FULL_ERROR=1 prints the traceback)", EXIT_FAILED)


def _exit(message: str, status: int) -> None:
    print(f"mmnsim: {message}", file=sys.stderr)
    sys.exit(status)


def install() -> None:
    """Replace Hydra's file writes and error report (idempotent)."""
    hydra_core_utils._save_config = save_config
    basic_sweeper.OmegaConf = AtomicSaveOmegaConf
    hydra_utils.run_and_report = run_and_report
    hydra_sweeper.Sweeper.validate_batch_is_legal = validate_batch_is_legal
