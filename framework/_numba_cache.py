"""Where numba caches compiled kernels: a directory named after a hash of mmnsim's sources.

Numba keys a cached function on its own file's timestamp only, but the kernels fold in constants from
other modules (counter indices, flag bits); after an edit to one of those, a stale cache would silently
use old values. A cache directory per source version makes every edit start afresh.
"""

import hashlib
import os
import shutil
from pathlib import Path

import numba

_PACKAGE = Path(__file__).resolve().parent


def _sources() -> list[Path]:
    roots = [_PACKAGE, _PACKAGE.parent / "plugins"]  # the plugins live beside framework/ in a checkout
    try:
        import importlib.util

        spec = importlib.util.find_spec("mmnsim.plugins")
        if spec and spec.submodule_search_locations:
            roots.append(Path(next(iter(spec.submodule_search_locations))))
    except (ImportError, ValueError):
        pass
    return sorted({p for root in roots if root.is_dir() for p in root.glob("*.py")})


def use_versioned_cache() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return  # the user chose
    digest = hashlib.sha1()
    for path in _sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    name = f"numba-{digest.hexdigest()[:12]}"
    for parent in (_PACKAGE / "__pycache__", Path.home() / ".cache" / "mmnsim"):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for old in parent.glob("numba-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
            (parent / name).mkdir(exist_ok=True)
        except OSError:
            continue
        numba.config.CACHE_DIR = str(parent / name)
        return


use_versioned_cache()
