"""The registry a call uses: the built-ins, with a user registry (object or YAML path) over them.

A registry given by path is cached by its resolved path and its files' names, modification times, sizes and
inodes (at most :data:`CACHED_REGISTRIES`): an unchanged file is not read again, a changed one is.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .parsing import registry_files
from .registry import PersonaRegistry

CACHED_REGISTRIES = 16
"""Registries loaded from a path that :func:`load_registry` keeps (by path, modification time and size)."""


def _signature(path: Path) -> tuple[Any, ...] | None:
    """What identifies a registry path's content: its resolved path and, for it or each file of the folder,
    the name, modification time, size and inode; None if it cannot be read (no caching)."""
    try:
        resolved = path.expanduser().resolve()
        files = registry_files(resolved) if resolved.is_dir() else [resolved]
        stats = []
        for file in files:
            st = os.stat(file)
            stats.append((file.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return (str(resolved), resolved.is_dir(), tuple(stats))
    except OSError:
        return None



_loaded: OrderedDict[tuple[Any, ...], PersonaRegistry] = OrderedDict()
_loaded_lock = threading.Lock()


def load_registry(registry: PersonaRegistry | str | Path | None) -> PersonaRegistry:
    """The built-ins, with a user registry (object or YAML path) over them.

    A registry given by path is cached by its resolved path and its files' modification times and sizes: an
    unchanged file is not read again, a changed one is.
    """
    base = PersonaRegistry.default()
    if registry is None:
        return base
    key = None
    if isinstance(registry, PersonaRegistry):
        user = registry
    else:
        key = _signature(Path(registry))
        if key is not None:
            with _loaded_lock:
                cached = _loaded.get(key)
                if cached is not None:
                    _loaded.move_to_end(key)
                    return cached
        user = PersonaRegistry.from_yaml(registry)
    with warnings.catch_warnings():
        # Overriding a built-in on purpose is normal for a user registry.
        warnings.simplefilter("ignore")
        merged = base.merge(user)
    merged.validate(missing_ok=False)
    if key is not None:
        with _loaded_lock:
            _loaded[key] = merged
            while len(_loaded) > CACHED_REGISTRIES:
                _loaded.popitem(last=False)
    return merged


__all__ = ["CACHED_REGISTRIES", "load_registry"]
