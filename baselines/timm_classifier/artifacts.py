"""timm's ImageNet weights as a prefetchable artifact (the ``timm`` artifact type): a local
``pretrained_file``, the hub cache for weights hosted on the hub, or torch's hub cache
(``TORCH_HOME``) for weights behind a URL."""

from __future__ import annotations

import os
from pathlib import Path

from bilora.artifacts import Artifact
from bilora.errors import ArtifactError


def timm_source(name: str) -> tuple[str, str, str]:
    """(where, id, file name) of timm's default weights: ``hf`` (hub id, file) or ``url``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ArtifactError(f"timm knows no pretrained weights for {name!r}")
    cfg = cfg.to_dict()
    if cfg.get("hf_hub_id"):
        return "hf", cfg["hf_hub_id"], cfg.get("hf_hub_filename") or ""
    if cfg.get("url"):
        return "url", cfg["url"], os.path.basename(cfg["url"])
    raise ArtifactError(f"timm's pretrained config of {name!r} names no hub id and no URL")


class TimmWeights:
    """Finds, fetches and checks timm's pretrained weights of a model name."""

    def must_exist(self, a: Artifact) -> bool:
        return False

    def local(self, a: Artifact) -> Path | None:
        if a.file:
            return Path(a.file).expanduser()
        where, ident, filename = timm_source(a.name)
        if where == "hf":
            from huggingface_hub import try_to_load_from_cache

            for f in ([filename] if filename else ["model.safetensors", "pytorch_model.bin"]):
                hit = try_to_load_from_cache(ident, f)
                if isinstance(hit, str):
                    return Path(hit)
            return None
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
        return path if path.is_file() else None


    def check(self, a: Artifact, path: Path) -> list[Path]:
        """Loadable, and holding every weight of the architecture but its classifier."""
        from baselines.timm_classifier.detector import check_weights_file

        if not path.is_file():
            raise ArtifactError(f"{path}: no such weights file")
        check_weights_file({"model_name": a.name, "model_kwargs": {}, "pretrained_file": str(path)})
        return [path]


    def fetch(self, a: Artifact) -> Path:
        where, ident, filename = timm_source(a.name)
        if where == "hf":
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import RemoteEntryNotFoundError

            names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
            for f in names:
                try:
                    return Path(hf_hub_download(ident, f))
                except RemoteEntryNotFoundError:  # not in the repo: the next name timm would try
                    continue
            raise ArtifactError(f"the hub repo {ident} holds none of {', '.join(names)}")
        from timm.models import download_cached_file

        return Path(download_cached_file(ident, progress=True))
