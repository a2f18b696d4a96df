"""Finding plugins: the built-in modules of ``mmnsim.plugins`` and modules named by installed packages
in the ``mmnsim`` entry-point group. Each simulation builds its own plugin manager, so nothing is shared
between runs in one process (Hydra's joblib launcher reuses worker processes).
"""

import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points

import pluggy
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from .components import Component
from .config import ConfigError
from .hookspecs import PROJECT, FrameworkHooks

BUILTIN_PACKAGE = "mmnsim.plugins"
KIND_DIRS = {"secondary": "secondary", "policy": "policies", "workload": "workload"}


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
            except (ModuleNotFoundError, TypeError):
                continue  # a module, not a package; a broken entry point is reported when it is loaded
    return list(dict.fromkeys(found))


class PluginConfSearchPath(SearchPathPlugin):
    """Adds each installed plugin package's ``conf`` folder to Hydra's config search path, so that
    ``secondary=NAME`` finds ``<package>/conf/secondary/NAME.yaml``. Registered when mmnsim is imported."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for package in plugin_conf_packages():
            search_path.append(provider=f"mmnsim-plugin:{package}", path=f"pkg://{package}.conf")


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(FrameworkHooks)
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        pm.register(importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}"), name=f"builtin:{info.name}")
    pm.load_setuptools_entrypoints(PROJECT)
    return pm


@dataclass
class Registry:
    """Component classes by kind and name, as the plugins registered them."""

    classes: dict[str, dict[str, type[Component]]] = field(default_factory=dict)
    source: dict[type, str] = field(default_factory=dict)

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> "Registry":
        reg = cls({kind: {} for kind in KIND_DIRS})
        for impl in pm.hook.register_components.get_hookimpls():
            for comp in impl.function() or ():
                if not (isinstance(comp, type) and issubclass(comp, Component)) or comp.kind not in KIND_DIRS:
                    raise ConfigError(
                        f"plugin '{impl.plugin_name}' registered {comp!r}, which is not a SecondaryMMU, "
                        "HostPolicy or Workload subclass"
                    )
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
    return sorted(rows, key=lambda r: (r["kind"], r["name"]))


def main(argv: list[str] | None = None) -> None:
    """``mmnsim-plugins``: list the plugins this installation finds."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="mmnsim-plugins", description=main.__doc__.strip("`: "))
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
