"""Facts about Ricker et al.'s LSUN Bedroom deepfake set (Zenodo record 7528113)."""

from __future__ import annotations

#: The ten generators of the set, in the order the LSUN rebuild hands out real images.
RICKER_GENERATORS = ("ADM", "DDPM", "Diff-ProjectedGAN", "Diff-StyleGAN2", "IDDPM", "LDM",
                     "PNDM", "ProGAN", "ProjectedGAN", "StyleGAN")

#: The layout (bilora/data/layouts/) of the record's extracted archives, its only one: that
#: of a ``source: zenodo`` dataset section that names none.
ZENODO_LAYOUT = "ricker"
