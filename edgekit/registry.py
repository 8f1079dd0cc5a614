"""The one Registry class used by every plug-in family (backbones, methods, backends, cameras,
outputs). Plug-ins register with a named decorator at their definition site; lookups of an
unknown name raise a ConfigError listing the valid names and the closest match."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from edgekit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → plug-in map for one family.

    Args:
        family: human name used in error messages ("backbone", "method", ...).
        modules: modules imported lazily on first lookup so their decorators run; heavy
            dependencies stay inside the plug-ins, so importing these is cheap.
    """

    def __init__(self, family: str, modules: tuple[str, ...] = ()) -> None:
        self.family = family
        self._modules = modules
        self._loaded = False
        self._entries: dict[str, T] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` with optional capability data."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.family} {name!r} registered twice")
            self._entries[name] = obj
            self._info[name] = dict(info)
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._modules:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as exc:
                # a plug-in module not present in this install (e.g. training code on a device
                # without torch) simply contributes no entries
                if exc.name is None or not mod.startswith(exc.name):
                    raise

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load()
        return sorted(self._entries)

    def info(self, name: str) -> dict[str, Any]:
        """Capability data declared at registration."""
        self.get(name)
        return dict(self._info[name])

    def get(self, name: str) -> T:
        """Return the plug-in or raise ConfigError naming the valid choices."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown {self.family} {name!r}{hint} (valid: {', '.join(sorted(self._entries)) or 'none'})"
        )

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries
