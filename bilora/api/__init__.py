"""The harness's contracts, apart from its plug-ins.

``detector``: the one detector interface; ``plugins``: lazy ``"module:attr"`` registries
read from plug-in folders; ``kinds``, ``bases`` and ``layouts``: what a detector kind, a
captioning VLM base and a dataset layout each declare. Nothing here names a kind, a base
or a layout: those live in their plug-in folders (``bilora/kinds/``, ``baselines/``,
``bilora/bases/``, ``bilora/data/layouts/``), each listing its members in one map.
"""
