"""Plug-ins by name: one ``Registry`` per kind of step (fetchers, extractors, outputs, tasks,
sources), each beside the Protocol its plug-ins satisfy. A plug-in registers its factory (a
class, or a function) under a name with a decorator; the worker creates it from that name,
once per process or per job, never per visit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from shared.errors import ConfigError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Factories of ``what`` (say "fetcher") by name."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """A decorator registering a factory under ``name``; a name is taken only once."""
        def add(factory: F) -> F:
            known = self._factories.get(name)
            if known is not None and known is not factory:
                raise ConfigError(self.what, f"{name!r} is registered already ({known!r})")
            self._factories[name] = factory
            return factory
        return add

    def create(self, name: str, *args: Any, **kw: Any) -> T:
        """A new instance of the plug-in registered as ``name``, made with these arguments."""
        try:
            factory = self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(self.what, f"unknown {name!r} (known: {known})") from None
        return factory(*args, **kw)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def __contains__(self, name: object) -> bool:
        return name in self._factories
