"""Frozen-encoder token cache on disk.

When a stage keeps the vision encoder frozen (and no random augmentation is applied), the encoder's tokens of a
study depend only on the image files, the encoder weights and the preprocessing settings. :class:`FeatureCache`
computes them once and stores them as safetensors files keyed by

- the SHA-256 of every view file's bytes (in view order),
- the encoder identity (:func:`encoder_fingerprint`: class, token shape and a hash of its weights),
- the preprocessing settings (image size, number of views, window ... as a JSON-able dict).

The encoder identity and settings select a sub-directory (``<cache_dir>/<fingerprint>/``), so a different encoder or
preprocessing never reads stale tokens. Entries are reused across epochs, stages and runs.

:class:`CachedTokensd` is the dataset transform that replaces a study's view paths with its cached tokens
``(V, N, D)`` (and its view mask) so that the training loop skips image decoding and the encoder forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import optional_import

safetensors_torch, _ = optional_import("safetensors.torch")

__all__ = ["FeatureCache", "CachedTokensd", "encoder_fingerprint", "file_digest"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_fingerprint(encoder: torch.nn.Module, name: str | None = None) -> str:
    """Identity of an encoder: its class, an optional name (e.g. the local model path) and a hash of its weights.

    Hashing the weights (parameters and buffers, in name order) makes a fine-tuned or differently initialised
    encoder of the same class a different identity.
    """
    digest = hashlib.sha256()
    digest.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}|{name or ''}".encode())
    with torch.no_grad():
        for key, tensor in sorted(encoder.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


class FeatureCache:
    """Token cache of one (encoder, preprocessing) pair.

    Args:
        cache_dir: root directory of the cache (shared by every encoder / setting).
        encoder_id: identity of the encoder, e.g. :func:`encoder_fingerprint`.
        settings: preprocessing settings that change the encoder input (JSON-serialisable).
        dtype: dtype in which tokens are stored (float16 halves the disk use of large encoders).

    Attributes:
        hits: number of lookups served from disk.
        misses: number of lookups that found nothing.
        directory: ``<cache_dir>/<fingerprint>`` where entries of this pair live.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        encoder_id: str,
        settings: Mapping[str, Any] | None = None,
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.encoder_id = str(encoder_id)
        self.settings = dict(settings or {})
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        blob = json.dumps({"encoder": self.encoder_id, "settings": self.settings}, sort_keys=True, default=str)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.directory = self.cache_dir / self.fingerprint
        self.hits = 0
        self.misses = 0
        self._digests: dict[tuple[str, int, int], str] = {}

    # keys -------------------------------------------------------------------------------------------------------
    def _file_digest(self, path: str | os.PathLike) -> str:
        stat = os.stat(path)
        memo_key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._digests:
            self._digests[memo_key] = file_digest(path)
        return self._digests[memo_key]

    def key(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
        """Cache key of a study: hash of its view files' content digests, in view order."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        digest = hashlib.sha256()
        for path in paths:
            digest.update(self._file_digest(path).encode())
            digest.update(b"|")
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """File of an entry."""
        return self.directory / key[:2] / f"{key}.safetensors"

    # storage ----------------------------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors of ``key`` (``"tokens"`` and ``"view_mask"``), or None on a miss."""
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return safetensors_torch.load_file(str(path))

    def put(self, key: str, tokens: torch.Tensor, view_mask: torch.Tensor | None = None) -> Path:
        """Store a study's tokens ``(V, N, D)`` and view mask ``(V,)`` (atomic rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": tokens.detach().to("cpu", self.dtype).contiguous()}
        if view_mask is not None:
            tensors["view_mask"] = view_mask.detach().to("cpu", torch.bool).contiguous()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        safetensors_torch.save_file(tensors, str(tmp), metadata={"encoder": self.encoder_id})
        os.replace(tmp, path)
        return path

    def write_manifest(self) -> None:
        """Record the encoder identity and settings beside the entries (for people inspecting the cache)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {"encoder": self.encoder_id, "settings": self.settings, "dtype": str(self.dtype)}
        (self.directory / "cache_info.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")

    # filling ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fill(
        self,
        items: Sequence[Mapping[str, Any]],
        encoder: torch.nn.Module,
        load_transform: Any,
        image_key: str = "image",
        view_mask_key: str = "view_mask",
        batch_size: int = 16,
        device: torch.device | str = "cpu",
    ) -> dict[str, int]:
        """Encode every study of ``items`` whose tokens are not cached yet.

        Args:
            items: data dicts whose ``image_key`` holds the view paths of a study.
            encoder: the frozen encoder, called as ``encoder(images (B, V, C, H, W), view_mask (B, V))`` and
                returning ``(B, V, N, D)``.
            load_transform: dict transform that loads ``image_key`` to ``(V, C, H, W)`` and writes
                ``view_mask_key`` (e.g. ``LoadStudyViewsd``).
            image_key: key of the view paths.
            view_mask_key: key of the view mask written by ``load_transform``.
            batch_size: studies encoded together.
            device: device of the encoder.

        Returns:
            counts ``{"cached": already present, "computed": newly written}``.
        """
        was_training = encoder.training
        encoder.eval()
        todo: list[tuple[str, Mapping[str, Any]]] = []
        seen: set[str] = set()
        cached = 0
        for item in items:
            key = self.key(item[image_key])
            if key in seen:
                continue
            seen.add(key)
            if key in self:
                cached += 1
            else:
                todo.append((key, item))
        self.write_manifest()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            loaded = [load_transform({image_key: item[image_key]}) for _, item in chunk]
            views = max(int(d[image_key].shape[0]) for d in loaded)
            images, masks = [], []
            for d in loaded:
                img = torch.as_tensor(d[image_key])
                mask = torch.as_tensor(d.get(view_mask_key, torch.ones(img.shape[0], dtype=torch.bool)))
                if img.shape[0] < views:
                    pad = img.new_zeros((views - img.shape[0], *img.shape[1:]))
                    img = torch.cat([img, pad])
                    mask = torch.cat([mask, mask.new_zeros(views - mask.shape[0])])
                images.append(img)
                masks.append(mask.bool())
            batch = torch.stack(images).to(device)
            mask_batch = torch.stack(masks).to(device)
            tokens = encoder(batch, view_mask=mask_batch)
            for i, (key, _) in enumerate(chunk):
                count = int(loaded[i][image_key].shape[0])
                self.put(key, tokens[i, :count], mask_batch[i, :count])
        encoder.train(was_training)
        logger.info("feature cache %s: %d studies already cached, %d encoded", self.directory, cached, len(todo))
        return {"cached": cached, "computed": len(todo)}


class CachedTokensd(MapTransform):
    """Replace a study's view paths by its cached encoder tokens.

    Reads ``keys`` (view paths), looks the study up in ``cache`` and writes the tokens ``(V, N, D)`` in place of the
    paths and the view mask ``(V,)`` under ``view_mask_key``. On a miss, ``on_miss="compute"`` loads the views with
    ``load_transform``, runs ``encoder`` and stores the result; ``on_miss="raise"`` raises ``KeyError``.

    Args:
        keys: key(s) holding view paths.
        cache: the :class:`FeatureCache`.
        encoder: the frozen encoder (needed for ``on_miss="compute"``).
        load_transform: the loading transform used on a miss.
        view_mask_key: output key of the view mask.
        on_miss: "compute" or "raise".
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache: FeatureCache,
        encoder: torch.nn.Module | None = None,
        load_transform: Any | None = None,
        view_mask_key: str = "view_mask",
        on_miss: str = "compute",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if on_miss not in ("compute", "raise"):
            raise ValueError(f"on_miss must be 'compute' or 'raise', got {on_miss!r}")
        if on_miss == "compute" and (encoder is None or load_transform is None):
            raise ValueError("on_miss='compute' needs the encoder and the load transform")
        self.cache = cache
        self.encoder = encoder
        self.load_transform = load_transform
        self.view_mask_key = view_mask_key
        self.on_miss = on_miss

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            cache_key = self.cache.key(d[key])
            entry = self.cache.get(cache_key)
            if entry is None:
                if self.on_miss == "raise":
                    raise KeyError(f"no cached tokens for study {d.get('id', cache_key)}")
                load_key = next(iter(getattr(self.load_transform, "keys", None) or [key]))  # the loader's key
                self.cache.fill(
                    [{load_key: d[key]}],
                    self.encoder,
                    self.load_transform,
                    image_key=load_key,
                    view_mask_key=self.view_mask_key,
                    batch_size=1,
                    device=next(self.encoder.parameters()).device,
                )
                entry = self.cache.get(cache_key)
                self.cache.hits -= 1  # the lookup that followed the computation is not a hit
            tokens = entry["tokens"].float()
            d[key] = tokens
            d[self.view_mask_key] = entry.get("view_mask", torch.ones(tokens.shape[0], dtype=torch.bool))
        return d
