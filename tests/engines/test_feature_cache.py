"""Tests of the frozen-encoder token cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_r2gen.engines.feature_cache import CachedTokensd, FeatureCache, encoder_fingerprint


class CountingEncoder(torch.nn.Module):
    """(B, V, C, H, W) -> (B, V, 4, 3) tokens, counting the studies it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.calls = 0

    def forward(self, images: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += images.shape[0]
        b, v = images.shape[:2]
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.flatten(0, 2), 2).reshape(b, v, 4)
        tokens = self.proj(pooled).unsqueeze(2).expand(b, v, 4, 3)
        if view_mask is not None:
            tokens = tokens * view_mask[:, :, None, None]
        return tokens


class LoadViews:
    """Minimal LoadStudyViewsd stand-in: PNG paths -> (2, 1, 8, 8) + view mask."""

    def __call__(self, data: dict) -> dict:
        views = [torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255.0)[None] for p in data["image"]]
        image = torch.zeros(2, 1, 8, 8)
        image[: len(views)] = torch.stack(views)[:2]
        mask = torch.arange(2) < len(views)
        return {**data, "image": image, "view_mask": mask}


def _png(path: Path, value: int) -> str:
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture()
def studies(tmp_path: Path) -> list[dict]:
    return [
        {"id": "a", "image": [_png(tmp_path / "a1.png", 10), _png(tmp_path / "a2.png", 200)]},
        {"id": "b", "image": [_png(tmp_path / "b1.png", 90)]},
        {"id": "c", "image": [_png(tmp_path / "c1.png", 150)]},
    ]


def test_keys_follow_file_content_and_view_order(studies: list[dict], tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache", "enc")
    a_key = cache.key(studies[0]["image"])
    assert a_key == cache.key(list(studies[0]["image"]))
    assert a_key != cache.key(studies[0]["image"][::-1])
    copy = tmp_path / "copy_of_b1.png"
    copy.write_bytes(Path(studies[1]["image"][0]).read_bytes())
    assert cache.key([str(copy)]) == cache.key(studies[1]["image"])  # same bytes, other name: same key
    _png(copy, 91)
    assert cache.key([str(copy)]) != cache.key(studies[1]["image"])


def test_encoder_identity_and_settings_select_the_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = CountingEncoder()
    first = encoder_fingerprint(encoder)
    assert first == encoder_fingerprint(encoder)
    with torch.no_grad():
        encoder.proj.bias.add_(1.0)
    assert encoder_fingerprint(encoder) != first
    base = FeatureCache(tmp_path, first, {"image_size": 8})
    assert FeatureCache(tmp_path, first, {"image_size": 8}).directory == base.directory
    assert FeatureCache(tmp_path, first, {"image_size": 16}).directory != base.directory
    assert FeatureCache(tmp_path, encoder_fingerprint(encoder), {"image_size": 8}).directory != base.directory


def test_fill_encodes_each_study_once_and_transform_hits(studies: list[dict], tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(encoder), {"image_size": 8})
    counts = cache.fill(studies + studies[:1], encoder, LoadViews(), batch_size=2)
    assert counts == {"cached": 0, "computed": 3} and encoder.calls == 3
    assert cache.fill(studies, encoder, LoadViews()) == {"cached": 3, "computed": 0} and encoder.calls == 3
    assert (cache.directory / "cache_info.json").is_file()

    transform = CachedTokensd("image", cache, on_miss="raise")
    out = transform(dict(studies[0]))
    expected = encoder(LoadViews()(dict(studies[0]))["image"][None], torch.tensor([[True, True]]))[0]
    torch.testing.assert_close(out["image"], expected.detach())
    assert out["view_mask"].tolist() == [True, True]
    assert transform(dict(studies[1]))["view_mask"].tolist() == [True, False]
    assert (cache.hits, cache.misses) == (2, 0)


def test_miss_computes_or_raises(studies: list[dict], tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(encoder))
    with pytest.raises(KeyError, match="no cached tokens"):
        CachedTokensd("image", cache, on_miss="raise")(dict(studies[2]))
    computing = CachedTokensd("image", cache, encoder=encoder, load_transform=LoadViews())
    first = computing(dict(studies[2]))
    second = computing(dict(studies[2]))
    assert encoder.calls == 1 and torch.equal(first["image"], second["image"])
    assert cache.misses == 2 and cache.hits == 1
    with pytest.raises(ValueError, match="needs the encoder"):
        CachedTokensd("image", cache)


def test_miss_loads_with_the_loaders_own_key(studies: list[dict], tmp_path: Path) -> None:
    """The workflow caches under "image_tokens" while its loader reads "image" (a miss on a second DDP rank)."""

    class KeyedLoadViews(LoadViews):
        keys = ("image",)

    encoder = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(encoder))
    transform = CachedTokensd("image_tokens", cache, encoder=encoder, load_transform=KeyedLoadViews())
    out = transform({"id": "c", "image_tokens": studies[2]["image"]})
    assert out["image_tokens"].shape == (2, 4, 3) and out["view_mask"].tolist() == [True, False]
    assert encoder.calls == 1 and cache.misses == 1
