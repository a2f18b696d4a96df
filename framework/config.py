"""Turning YAML nodes into typed, checked settings, and the error a bad one raises.

A component declares its settings as a dataclass without defaults (the defaults live in its YAML file,
once); ``typed`` checks a config node against it and names the key and the accepted values on failure.
Settings given inline, with no YAML file of their own (a process's), may have defaults in the dataclass.
Range checks go in the dataclass's ``__post_init__`` as ``require(...)`` calls.
"""

import copy
import dataclasses
import json
import traceback
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")
SOURCES = "sources"  # a component node's cost ranges and sources (framework/costsources.py); not a setting


class ConfigError(ValueError):
    """A configuration value is wrong. The message names the key and what would be accepted."""


def plugin_raised(who: str, method: str, exc: BaseException, key: str = "") -> ConfigError:
    """The one line for a plugin's code that raised while a config was checked (a ``Config``'s
    ``__post_init__``, ``region_of``, ``register_components``): it, the method, the error and the line that
    raised. (No traceback: this runs before a run, and its log file, exist.)"""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return ConfigError(f"{key + ': ' if key else ''}{who} raised in {method}: {exc!r}{where}")


class RunError(RuntimeError):
    """A run could not finish for a reason outside its config (the real twin: a tenant process crashed, the
    time limit passed). The message says it in one line; the command exits with status 1."""


def require(ok: bool, message: str) -> None:
    """For ``__post_init__`` checks: raise ConfigError(message) unless ``ok``."""
    if not ok:
        raise ConfigError(message)


# typed()'s results by schema, path and content: OmegaConf's structured merge takes tens of milliseconds, and a
# sweep checks and builds the same host, engine and costs for every job (in the sweep's process and in each
# worker). Only what passed is kept: a bad node raises again, with its message, every time.
_TYPED: dict[tuple[type, str, str], Any] = {}


def typed(node: Any, schema: type[T], path: str) -> T:
    """Check ``node`` (a DictConfig or dict) against the dataclass ``schema`` and return an instance."""
    if not isinstance(node, DictConfig | dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {node!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if SOURCES in node and SOURCES not in fields:  # documentation of the costs, read by mmnsim-costs
        node = {k: v for k, v in node.items() if k != SOURCES}
    keys = list(node.keys())
    unknown = [k for k in keys if k not in fields]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; accepted keys: {', '.join(fields)}")
    missing = [k for k, f in fields.items() if k not in keys and _required(f)]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}: missing; {path} needs: {', '.join(fields)}")
    _check_raw_types(node, fields, path)
    try:
        data = _resolved(node)
        key = (schema, path, json.dumps(data, sort_keys=True, default=repr))
        if key not in _TYPED:
            if len(_TYPED) >= 512:
                _TYPED.clear()
            _TYPED[key] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
        return copy.deepcopy(_TYPED[key])  # the caller's own: a sweep's jobs must not share one
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        field = fields.get(key.split(".")[0])
        raise ConfigError(f"{path}.{key}: {_reason(exc, field)}") from None
    except ConfigError as exc:
        field, _, rest = str(exc).partition(" ")
        if field in fields:  # "memory_mib must be > 0, got 0" -> "host.memory_mib: must be > 0, got 0"
            raise ConfigError(f"{path}.{field}: {rest}") from None
        raise ConfigError(f"{path}: {exc}") from None


INT64_MAX = (1 << 63) - 1


def _resolved(node: Any) -> Any:
    """``node`` as plain data with its interpolations resolved where it sits in the whole config, as Hydra
    resolves them: merged into the schema on its own, ``${host.memory_mib}`` would find no ``host``."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: _resolved(v) for k, v in node.items()}
    return node


def _check_raw_types(node: Any, fields: dict[str, dataclasses.Field], path: str) -> None:
    """What OmegaConf's merge would coerce silently: an integer into a bool field (``boot=8451285`` becomes
    true), and an integer no int64 array can hold (numpy would raise later, mid-run)."""
    for key in node:
        try:
            value = node[key]
        except OmegaConfBaseException as exc:  # an interpolation that does not resolve
            raise ConfigError(f"{path}.{key}: {str(exc).splitlines()[0]}") from None
        kind = fields[key].type
        if kind in (bool, "bool") and not isinstance(value, bool):
            raise ConfigError(f"{path}.{key}: invalid value {value!r}; expected true or false")
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ConfigError(f"{path}.{key}: {value} does not fit in 64 bits")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _reason(exc: OmegaConfBaseException, field: dataclasses.Field | None) -> str:
    value = getattr(exc, "value", None)
    kind = field.type if field is not None else None
    if isinstance(kind, type) and issubclass(kind, Enum):
        return f"invalid value {value!r}; accepted: {', '.join(m.value for m in kind)}"
    if kind is not None:
        name = getattr(kind, "__name__", str(kind))
        return f"invalid value {value!r}; expected {name}"
    return str(exc).splitlines()[0]
