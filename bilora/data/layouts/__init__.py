"""Dataset layouts: one module each (its mapper and its ``LAYOUT`` spec,
:class:`bilora.api.layouts.Layout`), registered by one line here. Read without importing
them (``bilora.api.layouts.LAYOUTS``); see docs/adding_a_dataset.md."""

LAYOUTS = {
    "canonical": "bilora.data.layouts.canonical:LAYOUT",
    "community_forensics": "bilora.data.layouts.community_forensics:LAYOUT",
    "folder": "bilora.data.layouts.folder:LAYOUT",
    "genimage": "bilora.data.layouts.genimage:LAYOUT",
    "ricker": "bilora.data.layouts.ricker:LAYOUT",
    "synthbuster": "bilora.data.layouts.synthbuster:LAYOUT",
}
