"""What a dataset layout declares, and the registry of layouts (no torch).

A layout maps a folder of images onto manifest entries. It is one module in
``bilora/data/layouts/`` holding a :class:`Layout` named ``LAYOUT``, plus one line in that
folder's ``LAYOUTS`` map; the ``organize`` command, the config schema and the report's
captions read it from there. The transport (a local folder, a Zenodo record) is chosen
apart from the layout: a dataset section's ``source`` is the one, its ``layout`` the other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bilora.api.plugins import Registry

LAYOUTS = Registry("dataset layout", "LAYOUTS", ("bilora.data.layouts",))
#: Layout params that ``bilora organize`` has a flag of its own for (not ``--param``).
ORGANIZE_OPTIONS = ("generator", "generators", "splits", "split_map", "seed")


@dataclass(frozen=True)
class Layout:
    """A dataset layout.

    ``mapper(source, dataset_dir, **params)`` returns the folder's entries
    (an iterable of :class:`bilora.data.manifest.Entry`: a list, or a generator that
    streams a large listing). ``params`` are the mapper's keyword params, each
    a dataset-section key and an ``organize`` option of the same name (``split_map`` is
    ``--split-map``); it gets those given, not null; ``required`` are those it cannot do
    without. ``test_reals`` describes its test reals in the report's captions; ``summary``
    is one line of the schema's and the CLI's help. ``schema`` is an optional JSON Schema
    fragment a dataset section naming this layout must also satisfy; keys under its
    ``properties`` that the section does not define are added to the section, so a layout
    can bring its own dataset keys (allowed only with that layout); ``licence`` is the
    images' licence as the data card states it (None: not stated by the layout);
    ``digests`` are the published folder digests of its extracted ``<root>/<split>``
    folders, checked after a Zenodo fetch (the section's ``digests`` and
    ``check_digests`` over them; a layout without them has no digest checks).
    """

    mapper: Callable[..., Iterable[Any]]
    test_reals: str
    summary: str
    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    schema: Mapping[str, Any] = field(default_factory=dict)
    licence: str | None = None
    digests: Mapping[str, str] = field(default_factory=dict)


def layout_of(section: Mapping[str, Any]) -> str:
    """The layout of a dataset section: its ``layout`` key, else its transport's own (a
    Zenodo record is Ricker et al.'s set, which has one layout)."""
    if "layout" in section:
        return section["layout"]
    if section.get("source") == "zenodo":
        from bilora.data.ricker import ZENODO_LAYOUT

        return ZENODO_LAYOUT
    raise KeyError(f"a dataset section of source {section.get('source')!r} names no layout")


def contribute_schema(schema: dict[str, Any]) -> None:
    """Fill the registered layouts into ``schema`` in place: every ``$defs`` section with a
    ``layout`` property gets their names as its enum, their summaries as its description,
    and, per layout, its ``required`` params and ``schema`` fragment as an if/then; a key
    that only some layouts' fragments define becomes a section key allowed with them."""
    names = LAYOUTS.names()
    for section in schema["$defs"].values():
        prop = section.get("properties", {}).get("layout")
        if prop is None:
            continue
        specs = {name: LAYOUTS.get(name) for name in names}
        prop["enum"] = names
        prop["description"] = (prop.get("description", "") + " Layouts: " + "; ".join(
            f"{name}: {spec.summary}" for name, spec in specs.items()) + ".").strip()
        own = set(section.get("properties", {}))
        extra: dict[str, list[str]] = {}  # a key of some layouts only -> those layouts
        for name, spec in specs.items():
            for key in spec.schema.get("properties", {}):
                if key not in own:
                    extra.setdefault(key, []).append(name)
        for key, owners in extra.items():  # known to the section, allowed with its owners
            section["properties"][key] = True  # (and checked by each owner's if/then)
            section.setdefault("allOf", []).append(
                {"if": {"required": [key]},
                 "then": {"required": ["layout"], "properties": {"layout": {"enum": owners}}}})
        for name, spec in specs.items():
            then = copy.deepcopy(dict(spec.schema))
            then["required"] = [*then.get("required", []), *spec.required]
            section.setdefault("allOf", []).append(
                {"if": {"required": ["layout"], "properties": {"layout": {"const": name}}},
                 "then": then})
