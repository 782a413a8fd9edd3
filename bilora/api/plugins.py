"""Lazy registries over plug-in folders, without importing torch.

A plug-in folder is a package whose ``__init__`` (torch-free) holds one map from a
plug-in's id to a ``"module:attribute"`` string: the plug-in's spec. Adding a plug-in is
its module plus one line in that map. The Snakefile reads the maps at DAG build for
free; a plug-in's module is imported only when something asks for it.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any


def resolve(ref: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry:
    """The members of some plug-in folders: ``folders`` are packages each holding the map
    ``attr`` (id -> ``"module:attribute"``); ``what`` names a member in errors."""

    def __init__(self, what: str, attr: str, folders: tuple[str, ...]):
        self.what, self.attr, self.folders = what, attr, folders

    def refs(self) -> dict[str, str]:
        """Every member's id and spec reference, folder by folder (an id twice is a bug)."""
        return _refs(self.what, self.attr, self.folders)

    def names(self) -> list[str]:
        return sorted(self.refs())

    def ref(self, name: str) -> str:
        refs = self.refs()
        if name not in refs:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(refs))}")
        return refs[name]

    def get(self, name: str) -> Any:
        """The spec of member ``name`` (its module imported now); the error lists the known
        ones."""
        return _get(self.ref(name))


@cache
def _refs(what: str, attr: str, folders: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for folder in folders:
        for name, ref in getattr(importlib.import_module(folder), attr).items():
            if name in out:
                raise RuntimeError(f"{what} {name!r} is registered twice ({out[name]}, {ref})")
            out[name] = ref
    return out


@cache
def _get(ref: str) -> Any:
    return resolve(ref)
