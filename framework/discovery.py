"""Finding plugins: the built-in modules of ``mmnsim.plugins`` and modules named by installed packages
in the ``mmnsim`` entry-point group. Each simulation builds its own plugin manager, so nothing is shared
between runs in one process (Hydra's joblib launcher reuses worker processes).
"""

import dataclasses
import difflib
import importlib
import logging
import os
import pkgutil
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points

import pluggy
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from .components import Component
from .config import ConfigError, plugin_raised
from .entry import ArgumentParser, console_script
from .hookspecs import PROJECT, FrameworkHooks

BUILTIN_PACKAGE = "mmnsim.plugins"
KIND_DIRS = {"secondary": "secondary", "policy": "policies", "workload": "workload"}
log = logging.getLogger("mmnsim")
_reported: set[str] = set()  # broken entry points already reported by this process


def plugin_conf_packages() -> list[str]:
    """Packages of installed plugins (entry points in the ``mmnsim`` group) that ship a ``conf`` folder:
    the entry point's module if it is a package, else the package holding it. Their YAML files join
    Hydra's config groups (``PluginConfSearchPath``)."""
    found = []
    for ep in entry_points(group=PROJECT):
        module = ep.value.split(":")[0]
        for package in (module, module.rpartition(".")[0]):
            try:
                if package and (resources.files(package) / "conf").is_dir():
                    found.append(package)
                    break
            except Exception:  # noqa: BLE001 (a module, not a package; or a broken one, reported when loaded)
                continue
    return list(dict.fromkeys(found))


class PluginConfSearchPath(SearchPathPlugin):
    """Adds each installed plugin package's ``conf`` folder to Hydra's config search path, so that
    ``secondary=NAME`` finds ``<package>/conf/secondary/NAME.yaml``. Registered when mmnsim is imported."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for package in plugin_conf_packages():
            search_path.append(provider=f"mmnsim-plugin:{package}", path=f"pkg://{package}.conf")
        for folder in filter(None, os.environ.get(CONF_PATH_ENV, "").split(os.pathsep)):
            search_path.append(provider="mmnsim-conf-path", path=f"file://{folder}")


CONF_PATH_ENV = "MMNSIM_CONF_PATH"  # more config folders (os.pathsep-separated): a sensitivity design's points


def plugin_manager() -> pluggy.PluginManager:
    """The built-in plugin modules and every installed entry point's. An entry point that does not import
    (a syntax error, a missing dependency) is reported once, in one line, and left out: runs that do not
    use it go on, and ``mmnsim-plugins`` lists it as broken (``pm.broken``)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(FrameworkHooks)
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        pm.register(importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}"), name=f"builtin:{info.name}")
    pm.broken = {}  # entry-point name -> (its module, the error)
    for ep in entry_points(group=PROJECT):  # as pm.load_setuptools_entrypoints, but one bad package stays out
        if pm.get_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 (any error of a package's import is that package's)
            package = ep.dist.name if ep.dist is not None else ep.value
            pm.broken[ep.name] = (ep.value, f"{type(exc).__name__}: {exc}".splitlines()[0])
            if ep.name not in _reported:
                _reported.add(ep.name)
                log.warning("plugin package '%s' (entry point %s = %s) does not load, left out: %s", package, ep.name,
                            ep.value, pm.broken[ep.name][1])  # fmt: skip
            continue
        pm.register(plugin, name=ep.name)
        impl = getattr(plugin, "register_components", None)
        try:
            empty = not hasattr(impl, f"{PROJECT}_impl") or not (impl() or ())
        except Exception as exc:  # noqa: BLE001 (its own code: left out as a package that does not import)
            pm.unregister(plugin)
            pm.broken[ep.name] = (ep.value, f"register_components raised {type(exc).__name__}: {exc}".splitlines()[0])
            if ep.name not in _reported:
                _reported.add(ep.name)
                log.warning("plugin package entry point %s (%s) left out: %s", ep.name, ep.value, pm.broken[ep.name][1])
            continue
        if empty and f"empty:{ep.name}" not in _reported:
            _reported.add(f"empty:{ep.name}")
            log.warning("plugin package entry point %s (%s) registers no components", ep.name, ep.value)
    return pm


def hook_names() -> list[str]:
    from .hookspecs import NotifierOps

    return sorted(n for n in dir(NotifierOps) + dir(FrameworkHooks) if not n.startswith("_"))


def check_hookimpls(owner: str, obj: object) -> None:
    """Raise ConfigError if ``obj`` (a plugin module or a component class) marks with ``@hookimpl`` a method
    whose name is no hook of the spec: pluggy would never call it."""
    hooks = hook_names()
    for name in dir(obj):
        if name.startswith("__") or name in hooks:
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # noqa: BLE001 (a property that needs an instance)
            continue
        if hasattr(value, f"{PROJECT}_impl"):
            close = difflib.get_close_matches(name, hooks, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; hooks: {', '.join(hooks)}"
            raise ConfigError(f"plugin '{owner}': @hookimpl '{name}' is not a hook of the spec{hint}")


@dataclass
class Registry:
    """Component classes by kind and name, as the plugins registered them."""

    classes: dict[str, dict[str, type[Component]]] = field(default_factory=dict)
    source: dict[type, str] = field(default_factory=dict)

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> "Registry":
        reg = cls({kind: {} for kind in KIND_DIRS})
        for name, plugin in pm.list_name_plugin():
            check_hookimpls(name, plugin)
        for impl in pm.hook.register_components.get_hookimpls():
            try:
                components = list(impl.function() or ())
            except Exception as exc:  # noqa: BLE001 (a plugin module's own code)
                raise plugin_raised(f"plugin '{impl.plugin_name}'", "register_components", exc) from None
            for comp in components:
                if not (isinstance(comp, type) and issubclass(comp, Component)) or comp.kind not in KIND_DIRS:
                    raise ConfigError(
                        f"plugin '{impl.plugin_name}' registered {comp!r}, which is not a SecondaryMMU, "
                        "HostPolicy or Workload subclass"
                    )
                if not dataclasses.is_dataclass(getattr(comp, "Config", None)):
                    raise ConfigError(
                        f"plugin '{impl.plugin_name}': {comp.__name__}.Config is {getattr(comp, 'Config', None)!r}, "
                        "not a dataclass (its fields are the component's settings)"
                    )
                check_hookimpls(f"{impl.plugin_name}: {comp.__name__}", comp)
                known = reg.classes[comp.kind].get(comp.name)
                if known is not None and known is not comp:
                    raise ConfigError(
                        f"two plugins register a {comp.kind} named '{comp.name}': "
                        f"{reg.source[known]} and {impl.plugin_name}"
                    )
                reg.classes[comp.kind][comp.name] = comp
                reg.source[comp] = impl.plugin_name
        return reg

    def get(self, kind: str, name: str, key: str) -> type[Component]:
        """The class of ``kind`` called ``name``; ``key`` is the config key that asked for it."""
        try:
            return self.classes[kind][name]
        except KeyError:
            accepted = ", ".join(sorted(self.classes.get(kind, {})))
            raise ConfigError(f"{key}: unknown {kind} '{name}'; accepted: {accepted}") from None


def describe(pm: pluggy.PluginManager) -> list[dict[str, str]]:
    """Every plugin the manager knows and the components it registers, with where it comes from and the
    hooks each implements (``mmnsim-plugins``)."""
    from .hookspecs import FrameworkHooks, NotifierOps

    hooks = [n for n in dir(NotifierOps) + dir(FrameworkHooks) if not n.startswith("_")]
    rows = []
    for impl in pm.hook.register_components.get_hookimpls():
        source = "built-in" if impl.plugin_name.startswith("builtin:") else f"entry point {impl.plugin_name}"
        for comp in impl.function() or ():
            implemented = [h for h in hooks if hasattr(getattr(comp, h, None), f"{PROJECT}_impl")]
            rows.append({"name": comp.name, "kind": comp.kind, "source": source,
                         "module": comp.__module__, "hooks": ", ".join(implemented) or "-"})  # fmt: skip
    for name, (module, error) in getattr(pm, "broken", {}).items():
        rows.append({"name": name, "kind": "BROKEN", "source": f"entry point {name}", "module": module,
                     "hooks": f"does not load: {error}"})  # fmt: skip
    return sorted(rows, key=lambda r: (r["kind"], r["name"]))


@console_script("mmnsim-plugins")
def main(argv: list[str] | None = None) -> None:
    """``mmnsim-plugins``: list the plugins this installation finds."""
    import sys

    parser = ArgumentParser(prog="mmnsim-plugins", description="list the plugins this installation finds")
    parser.parse_args(argv)
    try:
        rows = describe(plugin_manager())
    except (ConfigError, ImportError, pluggy.PluginValidationError) as exc:  # a broken plugin package
        print(f"mmnsim-plugins: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        sys.exit(2)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("kind", "name", "source", "module")}
    print("  ".join(k.ljust(widths[k]) for k in widths) + "  hooks")
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in widths) + f"  {r['hooks']}")
