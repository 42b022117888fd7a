"""A registry of named plug-ins (restorers, prompt extractors) imported on first use.

Each kind of plug-in has one :class:`Registry`: built-in entries given as ``"module:attr"`` paths, entries
registered at run time (an object or its path), and third-party entries found once, on the first lookup,
in an entry-point group. Names are case-insensitive. A path is imported only when its entry is first
used, so listing names never pulls in model code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from elqproj.errors import ConfigError, InvalidInputError, UnknownNameError

__all__ = ["Registry", "RegistryEntry", "import_object"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry:
    """One registered name.

    Attributes:
        target: the registered object, or its ``"module:attr"`` path (imported on first use).
        info: what the registry's owner shows about the entry without loading it (e.g. a description).
    """

    target: Any
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names -> plug-ins of one kind.

    Args:
        kind: what an entry is, in messages: ``"restorer"``, ``"prompt extractor"``. The registering
            function is called ``register_<kind>`` (spaces as underscores) in messages.
        group: the entry-point group third-party packages declare entries in.
        builtin: the entries present from the start (name -> entry).
        accepts: whether an object may be registered (checked at registration and after importing a path).
        expected: what ``accepts`` wants, in messages: ``"a Restorer subclass"``.
        path_form: how a path to such an object is written, in messages: ``"module:Class"``.
        unknown_hint: the last sentence of the unknown-name error; by default it names the entry-point
            group.
    """

    def __init__(
        self,
        kind: str,
        *,
        group: str,
        builtin: Mapping[str, RegistryEntry],
        accepts: Callable[[Any], bool],
        expected: str,
        path_form: str = "module:attr",
        unknown_hint: str | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self._builtin = {name.lower(): entry for name, entry in builtin.items()}
        self._accepts = accepts
        self._expected = expected
        self._path_form = path_form
        self._unknown_hint = unknown_hint or f"Third-party {kind}s register through the {group!r} entry-point group."
        self._entries: dict[str, RegistryEntry] = dict(self._builtin)
        self._imported: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, target: T | str, *, info: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> None:
        """Make ``target`` (an object ``accepts`` takes, or its path) available as ``name``.

        Raises:
            InvalidInputError: ``name`` is not a non-empty string, or ``target`` is neither accepted nor a
                string.
            ConfigError: ``name`` is taken by another target and ``overwrite`` is false. Registering the
                same target again is allowed.
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"A {self.kind} name must be a non-empty string, got {name!r}.")
        if not isinstance(target, str) and not self._accepts(target):
            raise InvalidInputError(
                f"register_{self.kind.replace(' ', '_')}({name!r}, ...) needs {self._expected} or a "
                f"'{self._path_form}' string, got {type(target).__name__}."
            )
        key = name.lower()
        taken = self._entries.get(key)
        if taken is not None and not overwrite and target not in (taken.target, self._imported.get(key)):
            raise ConfigError(f"A {self.kind} named {name!r} is already registered; pass overwrite=True to replace it.")
        self._entries[key] = RegistryEntry(target, dict(info or {}))
        self._imported.pop(key, None)

    def names(self) -> list[str]:
        """Every registered name, sorted: built-ins, run-time registrations and entry points."""
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return isinstance(name, str) and name.lower() in self._entries

    def entry(self, name: str) -> RegistryEntry:
        """The entry registered as ``name`` (nothing is imported).

        Raises:
            UnknownNameError: no such name; the message lists the known ones.
        """
        self._discover()
        key = name.lower() if isinstance(name, str) else name
        if key not in self._entries:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}. Known {self.kind}s: {', '.join(sorted(self._entries))}. "
                f"{self._unknown_hint}"
            )
        return self._entries[key]

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its path on first use.

        Raises:
            UnknownNameError: no such name, its path cannot be imported, or it leads to something
                ``accepts`` rejects.
        """
        target = self.entry(name).target
        if not isinstance(target, str):
            return target
        key = name.lower()
        if key not in self._imported:
            try:
                loaded = import_object(target)
            except UnknownNameError as exc:
                raise UnknownNameError(f"{self.kind.capitalize()} {name!r} is registered as {exc}") from exc
            if not self._accepts(loaded):
                raise UnknownNameError(f"{self.kind.capitalize()} {name!r} ({target!r}) is not {self._expected}.")
            self._imported[key] = loaded
        return self._imported[key]

    @contextmanager
    def isolated(self) -> Iterator[Registry[T]]:
        """Within the block the registry holds its built-ins only and has not looked for entry points
        yet; on exit it is as it was before (so tests can register and discover without leaking)."""
        saved = self._entries, self._imported, self._discovered
        self._entries, self._imported, self._discovered = dict(self._builtin), {}, False
        try:
            yield self
        finally:
            self._entries, self._imported, self._discovered = saved

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for point in entry_points(group=self.group):
            key = point.name.lower()
            if key in self._entries:
                logger.warning("Entry point %s=%s in %r ignored: the name is taken by %s", point.name,
                               point.value, self.group, self._entries[key].target)
                continue
            self._entries[key] = RegistryEntry(point.value, {"description": f"third-party {self.kind} ({point.value})"})


def import_object(path: str) -> Any:
    """The object at ``"package.module:attr"`` (importing the module).

    Raises:
        UnknownNameError: the module or attribute cannot be imported.
    """
    try:
        return EntryPoint(name=path, value=path, group="elqproj").load()
    except (ImportError, AttributeError, ValueError) as exc:
        raise UnknownNameError(f"{path!r}, which cannot be imported: {exc}") from exc
