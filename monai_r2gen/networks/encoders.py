"""Vision encoder adapters: a batch of studies ``(B, V, C, H, W)`` -> visual tokens ``(B, V, N, D)``.

Every adapter shares the same preprocessing (:class:`VisionEncoder`): grayscale radiographs are replicated to the
number of channels the backbone expects, resized to its input size when they differ, and normalised with the
backbone's image-processor mean / std when those are known. Views that are only padding (``view_mask`` False) are
not encoded at all; their tokens are zeros.

Adapters:

- :class:`HFVisionEncoder`: any Hugging Face vision model loaded with ``AutoModel`` (Swin, ViT, CLIP / SigLIP vision
  towers, DINOv2 ...), from a local directory or from a config.
- :class:`FeatureMapEncoder`: a convolutional feature map ``(b, C, h, w)`` read as an ``h*w`` token grid, used for
  MONAI's ``DenseNet121`` (its ``features`` block) and for :class:`SmallCNNEncoder`.
- :class:`MonaiViTEncoder`: MONAI's ``ViT`` (patch tokens, no class token).
- :class:`SmallCNNEncoder`: a few MONAI convolution blocks, the encoder of the embedded default (128 px -> 8x8 tokens).

:func:`build_encoder` builds one of them from plain settings (what :class:`~monai_r2gen.networks.generator.
GeneratorConfig` stores).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.host_syncs import host_reads_are_free

__all__ = [
    "ENCODER_KINDS",
    "VisionEncoder",
    "HFVisionEncoder",
    "FeatureMapEncoder",
    "MonaiViTEncoder",
    "SmallCNNEncoder",
    "build_encoder",
    "load_hf_vision_model",
    "load_weights_file",
    "read_image_processor_normalization",
    "sincos_position_encoding_2d",
]

logger = logging.getLogger(__name__)

ENCODER_KINDS = ("small_cnn", "hf", "monai_densenet121", "monai_densenet169", "monai_densenet201", "monai_vit")

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Normalisation used by each family's image processor, for model directories without a preprocessor_config.json.
_FAMILY_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "swin": _IMAGENET,
    "swinv2": _IMAGENET,
    "dinov2": _IMAGENET,
    "dinov2_with_registers": _IMAGENET,
    "convnext": _IMAGENET,
    "convnextv2": _IMAGENET,
    "resnet": _IMAGENET,
    "vit": _HALF,
    "clip": _OPENAI_CLIP,
    "clip_vision_model": _OPENAI_CLIP,
    "siglip": _HALF,
    "siglip_vision_model": _HALF,
    "siglip2": _HALF,
    "siglip2_vision_model": _HALF,
}
# Attention projections that LoRA targets by default, first match wins (HF ViT-likes, MONAI ViT).
_ENCODER_LORA_CANDIDATES = (("query", "value"), ("q_proj", "v_proj"), ("qkv",))


def sincos_position_encoding_2d(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2D sine-cosine position encoding of an ``height x width`` token grid.

    Args:
        height: grid rows.
        width: grid columns.
        dim: encoding size; half of it encodes the row, half the column (the remainder, if any, stays 0).
        device: tensor device.
        dtype: tensor dtype.

    Returns:
        ``(height * width, dim)`` tensor, rows in raster order.
    """
    quarter = dim // 4
    out = torch.zeros(height * width, dim, device=device, dtype=torch.float32)
    if quarter == 0:
        return out.to(dtype or torch.float32)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(height, device=device, dtype=torch.float32).repeat_interleave(width)
    cols = torch.arange(width, device=device, dtype=torch.float32).repeat(height)
    for i, coord in enumerate((rows, cols)):
        angles = coord[:, None] * freqs[None, :]
        out[:, 2 * i * quarter : (2 * i + 1) * quarter] = torch.sin(angles)
        out[:, (2 * i + 1) * quarter : (2 * i + 2) * quarter] = torch.cos(angles)
    return out.to(dtype or torch.float32)


def _as_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    seq = list(value)
    if len(seq) == 1:
        return (int(seq[0]), int(seq[0]))
    return (int(seq[-2]), int(seq[-1]))


class VisionEncoder(nn.Module):
    """Base class: preprocessing, padded-view skipping and the ``(B, V, N, D)`` layout.

    Subclasses implement :meth:`encode_tokens` on a preprocessed ``(b, C, H, W)`` batch and may override
    :meth:`encode_pooled`.

    Args:
        out_dim: size ``D`` of each token.
        in_channels: channels the backbone expects (1 for grayscale backbones, 3 for RGB ones).
        image_size: ``(H, W)`` the backbone expects; inputs of another size are resized (bilinear). None keeps the
            input size.
        mean: per-channel normalisation mean (a scalar or ``in_channels`` values); None = no normalisation.
        std: per-channel normalisation std.
        feature: "tokens" (every token of the last layer) or "pooled" (one token per view: the backbone's pooled
            output, R2GenGPT ``global_only``).
        normalize: apply ``mean`` / ``std``. Set False when the data pipeline already normalised the images.
    """

    def __init__(
        self,
        out_dim: int,
        in_channels: int = 3,
        image_size: Sequence[int] | int | None = None,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        feature: str = "tokens",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if feature not in ("tokens", "pooled"):
            raise ModelConfigError(f"encoder feature must be 'tokens' or 'pooled', got {feature!r}")
        if (mean is None) != (std is None):
            raise ModelConfigError("encoder mean and std must be given together")
        self.out_dim = int(out_dim)
        self.in_channels = int(in_channels)
        self.image_size = _as_size(image_size)
        self.feature = feature
        self.normalize = bool(normalize) and mean is not None
        self.register_buffer("pixel_mean", self._channel_tensor(mean, "mean"), persistent=False)
        self.register_buffer("pixel_std", self._channel_tensor(std, "std"), persistent=False)
        self._num_tokens: int | None = None
        self._resize_logged = False
        self._batch_statistics: bool | None = None

    def train(self, mode: bool = True) -> VisionEncoder:
        """Set training mode; a frozen encoder (no parameter requiring gradients) stays in eval mode.

        Its normalisation statistics then do not drift while other parts train, so its tokens (and the frozen-encoder
        feature cache) stay those of the weights it was frozen with.
        """
        frozen = mode and not any(p.requires_grad for p in self.parameters())
        return super().train(False if frozen else mode)

    def _channel_tensor(self, values: Sequence[float] | float | None, name: str) -> torch.Tensor:
        if values is None:
            return torch.zeros(0)
        vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
        if len(vals) == 1:
            vals = vals * self.in_channels
        if len(vals) != self.in_channels:
            raise ModelConfigError(f"encoder {name} has {len(vals)} values for {self.in_channels} channels")
        if name == "std" and min(vals) <= 0:
            raise ModelConfigError("encoder std values must be positive")
        return torch.tensor(vals, dtype=torch.float32).view(-1, 1, 1)

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """``(mean, std)`` applied to the images, or None when the encoder does not normalise."""
        if not self.normalize:
            return None
        return self.pixel_mean.flatten().tolist(), self.pixel_std.flatten().tolist()

    @property
    def num_tokens(self) -> int:
        """Tokens ``N`` per view (measured once with a dummy image when the backbone does not say)."""
        if self._num_tokens is None:
            if self.feature == "pooled":
                self._num_tokens = 1
            else:
                size = self.image_size or (224, 224)
                ref = next(iter(self.parameters()), None)
                device = ref.device if ref is not None else None
                dummy = torch.zeros(2, 1, self.in_channels, *size, device=device)
                was_training = self.training
                self.eval()  # no update of normalisation statistics
                try:
                    with torch.no_grad():
                        self._num_tokens = int(self.forward(dummy).shape[2])
                finally:
                    self.train(was_training)
        return self._num_tokens

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Channel replication / averaging, resizing and normalisation of a ``(b, C, H, W)`` batch."""
        x = x.float() if not torch.is_floating_point(x) else x
        channels = x.shape[1]
        if channels != self.in_channels:
            if channels == 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            elif self.in_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ModelConfigError(f"images have {channels} channels, the encoder expects {self.in_channels}")
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            if not self._resize_logged:
                logger.info("resizing encoder input from %s to %s", tuple(x.shape[-2:]), self.image_size)
                self._resize_logged = True
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        return x

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(b, N, D)`` of a preprocessed batch ``(b, C, H, W)``."""
        raise NotImplementedError

    def encode_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """One pooled vector per image, ``(b, D)``; the mean of the tokens unless the backbone has a pooler."""
        return self.encode_tokens(x).mean(dim=1)

    def forward(self, images: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a batch of studies.

        Args:
            images: ``(B, V, C, H, W)`` (or ``(B, C, H, W)`` for one view per study).
            view_mask: ``(B, V)`` bool, True for real views; padded views are skipped and get zero tokens.

        Returns:
            ``(B, V, N, D)`` tokens (``N`` = 1 when ``feature == "pooled"``).
        """
        if images.ndim == 4:
            images = images.unsqueeze(1)
        if images.ndim != 5:
            raise ValueError(f"expected images of shape (B, V, C, H, W), got {tuple(images.shape)}")
        batch, views = images.shape[:2]
        flat = images.reshape(batch * views, *images.shape[2:])
        dtype = self._compute_dtype()
        if view_mask is None:
            return self._encode(flat.to(dtype)).reshape(batch, views, -1, self.out_dim)
        keep = view_mask.reshape(-1).to(device=flat.device, dtype=torch.bool)
        if not host_reads_are_free(keep) and not (self.training and self._tracks_batch_statistics()):
            # an accelerator: encode the padded views too and zero their tokens rather than stall the host to
            # pick the real ones (batch statistics in training would see the padding: those pick them)
            tokens = self._encode(flat.to(dtype))
            tokens = tokens * keep.to(tokens.dtype).reshape(-1, *([1] * (tokens.ndim - 1)))
            return tokens.reshape(batch, views, -1, self.out_dim)
        if bool(keep.all()):
            return self._encode(flat.to(dtype)).reshape(batch, views, -1, self.out_dim)
        if not bool(keep.any()):
            raise ValueError("view_mask marks no view as present in the whole batch")
        tokens = self._encode(flat[keep].to(dtype))
        out = tokens.new_zeros(batch * views, *tokens.shape[1:])
        out[keep] = tokens
        return out.reshape(batch, views, -1, self.out_dim)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        if self.feature == "pooled":
            return self.encode_pooled(x).unsqueeze(1)
        return self.encode_tokens(x)

    def _tracks_batch_statistics(self) -> bool:
        """Whether a layer updates running statistics from the batch in training (BatchNorm); looked up once."""
        if self._batch_statistics is None:
            self._batch_statistics = any(
                isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats for m in self.modules()
            )
        return self._batch_statistics

    def _compute_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if torch.is_floating_point(p):
                return p.dtype
        return torch.float32

    def lora_target_modules(self) -> list[str]:
        """Default LoRA targets: the attention query/value projections of the backbone.

        Raises:
            ModelConfigError: when the backbone has none of the known projection names (give targets explicitly).
        """
        names = {name.rsplit(".", 1)[-1] for name, mod in self.named_modules() if isinstance(mod, nn.Linear)}
        for candidate in _ENCODER_LORA_CANDIDATES:
            if all(c in names for c in candidate):
                return list(candidate)
        raise ModelConfigError(
            f"{type(self).__name__}: no default LoRA target modules (linear layers: {sorted(names)}); "
            "set encoder_lora_target_modules explicitly"
        )

    def enable_gradient_checkpointing(self) -> bool:
        """Turn on activation checkpointing when the backbone supports it; returns whether it did."""
        return False


class HFVisionEncoder(VisionEncoder):
    """A Hugging Face vision model (``AutoModel``): Swin, ViT, CLIP / SigLIP vision tower, DINOv2 ...

    Tokens are the model's ``last_hidden_state`` (class / register tokens included); the pooled feature is its
    ``pooler_output`` (Swin: average pool, ViT / DINOv2 / CLIP: class token, SigLIP: attention-pooling head), or the
    token mean when the model has no pooler.

    Args:
        model: the vision model (a module called with ``pixel_values=`` returning ``last_hidden_state``).
        feature: "tokens" or "pooled".
        mean: normalisation mean; None uses the family default for ``model.config.model_type`` when known.
        std: normalisation std.
        normalize: apply the normalisation.
        image_size: expected input size; None reads ``model.config.image_size``.
    """

    def __init__(
        self,
        model: nn.Module,
        feature: str = "tokens",
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        normalize: bool = True,
        image_size: Sequence[int] | int | None = None,
    ) -> None:
        config = getattr(model, "config", None)
        if config is None:
            raise ModelConfigError(f"{type(model).__name__} has no Hugging Face config")
        if "pixel_values" not in inspect.signature(model.forward).parameters:
            raise ModelConfigError(f"{type(model).__name__} is not a vision model (its forward takes no pixel_values)")
        out_dim = getattr(model, "num_features", None)
        if not isinstance(out_dim, int):
            out_dim = getattr(config, "hidden_size", None)
        if not isinstance(out_dim, int):
            raise ModelConfigError(f"cannot tell the feature size of {type(model).__name__}")
        if mean is None and std is None:
            mean, std = _FAMILY_NORMALIZATION.get(getattr(config, "model_type", ""), (None, None))
        super().__init__(
            out_dim=out_dim,
            in_channels=int(getattr(config, "num_channels", 3)),
            image_size=image_size if image_size is not None else getattr(config, "image_size", None),
            mean=mean,
            std=std,
            feature=feature,
            normalize=normalize,
        )
        self.model = model

    @property
    def model_type(self) -> str:
        """The Hugging Face ``model_type`` of the backbone."""
        return str(getattr(self.model.config, "model_type", ""))

    def _run(self, x: torch.Tensor):
        return self.model(pixel_values=x, return_dict=True)

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x).last_hidden_state

    def encode_pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            return out.last_hidden_state.mean(dim=1)
        return pooled.reshape(pooled.shape[0], -1)

    def enable_gradient_checkpointing(self) -> bool:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if getattr(base, "supports_gradient_checkpointing", False):
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return True
        logger.warning("%s does not support gradient checkpointing", type(base).__name__)
        return False


class FeatureMapEncoder(VisionEncoder):
    """A convolutional feature map ``(b, C, h, w)`` read as ``h*w`` tokens of size ``C`` (raster order).

    Args:
        features: module mapping ``(b, in_channels, H, W)`` to ``(b, out_dim, h, w)``.
        out_dim: channels ``C`` of the feature map.
        in_channels: input channels of ``features``.
        image_size: expected input size (None keeps the input size).
        activation: optional module applied to the feature map (e.g. ReLU after DenseNet's last norm).
        position_encoding: add a fixed 2D sine-cosine position encoding to the tokens (a CNN grid carries little
            absolute position information by itself).
        channels_last: keep the convolution weights and run the input in channels-last memory format (the same
            values; oneDNN's faster layout for convolutions on CPU).
        **kwargs: ``mean``, ``std``, ``feature``, ``normalize`` of :class:`VisionEncoder`.
    """

    def __init__(
        self,
        features: nn.Module,
        out_dim: int,
        in_channels: int = 1,
        image_size: Sequence[int] | int | None = None,
        activation: nn.Module | None = None,
        position_encoding: bool = False,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(out_dim=out_dim, in_channels=in_channels, image_size=image_size, **kwargs)
        self.channels_last = bool(channels_last)
        self.features = features.to(memory_format=torch.channels_last) if self.channels_last else features
        self.activation = activation if activation is not None else nn.Identity()
        self.position_encoding = bool(position_encoding)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(b, C, h, w)`` feature map of a preprocessed batch."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.activation(self.features(x))

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(x)
        _, channels, height, width = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2)
        if self.position_encoding:
            tokens = tokens + sincos_position_encoding_2d(height, width, channels, fmap.device, fmap.dtype)
        return tokens

    def encode_pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class SmallCNNEncoder(FeatureMapEncoder):
    """The embedded default's encoder: stages of two MONAI convolution blocks, the first of each with stride 2.

    With the default four stages a 128 px radiograph gives an 8x8 grid of 64 tokens of 256 values. The weights and
    activations are kept channels-last (faster convolutions on CPU, the same values). Batch
    normalisation: trained from scratch on the phantoms, the same network with GroupNorm stayed at chance for 150
    iterations where BatchNorm reached a CheXpert micro-F1 of 0.73 in 300 (a pooled 14-label probe, batch 32). In
    eval mode, and whenever the encoder is frozen (see :meth:`VisionEncoder.train`), each study's tokens depend on
    that study alone.

    Args:
        image_size: input size (default 128).
        channels: output channels of each stage; the last one is the token size.
        in_channels: 1 (grayscale).
        mean: normalisation mean of the [0, 1] input.
        std: normalisation std.
        feature: "tokens" or "pooled".
        normalize: apply ``mean`` / ``std``.
    """

    def __init__(
        self,
        image_size: Sequence[int] | int = 128,
        channels: Sequence[int] = (32, 64, 128, 256),
        in_channels: int = 1,
        mean: float = 0.5,
        std: float = 0.25,
        feature: str = "tokens",
        normalize: bool = True,
    ) -> None:
        from monai.networks.blocks import Convolution

        if not channels:
            raise ModelConfigError("small_cnn needs at least one stage")
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            norm = ("BATCH", {})
            layers.append(Convolution(2, previous, width, strides=2, kernel_size=3, act="GELU", norm=norm))
            layers.append(Convolution(2, width, width, strides=1, kernel_size=3, act="GELU", norm=norm))
            previous = width
        super().__init__(
            features=nn.Sequential(*layers),
            out_dim=int(channels[-1]),
            in_channels=in_channels,
            image_size=image_size,
            position_encoding=True,
            channels_last=True,  # the CNN training step 0.120 s against 0.157 s channels-first (48 views, 2 CPU cores)
            mean=mean,
            std=std,
            feature=feature,
            normalize=normalize,
        )
        self.lora_convs = [f"features.{2 * i}.conv" for i in range(len(channels))]

    def lora_target_modules(self) -> list[str]:
        """The strided convolutions (peft LoRA supports ``Conv2d``)."""
        return list(self.lora_convs)


class MonaiViTEncoder(VisionEncoder):
    """MONAI's ``ViT`` (``classification=False``): its patch tokens.

    Args:
        net: a ``monai.networks.nets.ViT`` with ``spatial_dims=2``.
        image_size: its ``img_size``.
        in_channels: its ``in_channels``.
        **kwargs: ``mean``, ``std``, ``feature``, ``normalize`` of :class:`VisionEncoder`.
    """

    def __init__(self, net: nn.Module, image_size: Sequence[int] | int, in_channels: int = 1, **kwargs: Any) -> None:
        if getattr(net, "classification", False):
            raise ModelConfigError("MONAI ViT must be built with classification=False to give patch tokens")
        hidden = net.norm.normalized_shape[0]
        super().__init__(out_dim=int(hidden), in_channels=in_channels, image_size=image_size, **kwargs)
        self.net = net

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        ModelConfigError: the file is missing or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelConfigError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with objects, a corrupt file ...
        raise ModelConfigError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelConfigError(f"{path}: not a state dict of tensors")
    return obj


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, path: str) -> None:
    """Load the ``prefix``-ed (or unprefixed) entries of ``state`` into ``module`` strictly."""
    own = module.state_dict()
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        sub = {k.removeprefix("module."): v for k, v in state.items()}
        sub = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sub.items()}
    sub = {k: v for k, v in sub.items() if k in own}
    missing = sorted(set(own) - set(sub))
    if missing:
        raise ModelConfigError(f"{path}: weights do not match the encoder (missing {missing[:5]} ...)")
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        raise ModelConfigError(f"{path}: weights do not match the encoder ({exc})") from exc


def read_image_processor_normalization(path: str | os.PathLike) -> tuple[list[float], list[float]] | None:
    """``(image_mean, image_std)`` from a model directory's ``preprocessor_config.json``, if it has them."""
    cfg = Path(path) / "preprocessor_config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{cfg}: unreadable image processor config ({exc})") from exc
    if data.get("do_normalize") is False:
        return None
    if "image_mean" in data and "image_std" in data:
        return list(data["image_mean"]), list(data["image_std"])
    return None


def _vision_tower_config(hf_config: Any) -> Any:
    """The vision sub-config of a dual encoder (CLIP, SigLIP ...), else the config itself."""
    vision = getattr(hf_config, "vision_config", None)
    if vision is not None and str(getattr(vision, "model_type", "")).endswith("_vision_model"):
        return vision
    return hf_config


def load_hf_vision_model(
    path: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load a Hugging Face vision model from a local directory or build it (random init) from a config.

    A dual encoder (CLIP, SigLIP: a config with a ``*_vision_model`` vision config) yields its vision tower only;
    the text tower's weights are not loaded.

    Args:
        path: local model directory (loaded with ``local_files_only=True``).
        config: ``{"model_type": ..., **config kwargs}`` used when ``path`` is None.
        trust_remote_code: allow code shipped in the model directory (off by default).
        dtype: parameter dtype.

    Raises:
        ModelConfigError: neither or both of ``path`` and ``config``, an unknown model type, or a path that is not a
            loadable model directory.
    """
    from transformers import AutoConfig, AutoModel

    if (path is None) == (config is None):
        raise ModelConfigError("give exactly one of an encoder path or an encoder config")
    if path is not None:
        if not Path(path).is_dir():
            raise ModelConfigError(f"{path}: encoder directory not found")
        try:
            hf_config = AutoConfig.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code
            )
            hf_config = _vision_tower_config(hf_config)
            model = AutoModel.from_pretrained(
                str(path), config=hf_config, local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelConfigError(f"{path}: cannot load a vision model ({exc})") from exc
    else:
        kwargs = dict(config or {})
        model_type = kwargs.pop("model_type", None)
        if not model_type:
            raise ModelConfigError("encoder config needs a 'model_type' (e.g. 'swin', 'vit', 'dinov2')")
        try:
            hf_config = _vision_tower_config(AutoConfig.for_model(model_type, **kwargs))
            model = AutoModel.from_config(hf_config, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelConfigError(f"cannot build a {model_type!r} vision model: {exc}") from exc
        if dtype is not None:
            model = model.to(dtype)
    return model


def build_encoder(
    kind: str = "small_cnn",
    path: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    feature: str = "tokens",
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    normalize: bool = True,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> VisionEncoder:
    """Build an encoder adapter from plain settings.

    Args:
        kind: one of :data:`ENCODER_KINDS`.
        path: "hf": a local model directory; MONAI kinds: an optional weights file (``.safetensors`` or a torch state
            dict); "small_cnn": unused (its weights live in the generator's checkpoint).
        options: "hf" without a path: the HF config (``{"model_type": "swin", ...}``); "small_cnn": ``channels``;
            MONAI kinds: constructor arguments (``in_channels``, ``patch_size``, ``hidden_size`` ...).
        image_size: input size; "hf" defaults to the model config's ``image_size``.
        feature: "tokens" or "pooled".
        mean: normalisation mean; None = the image processor's (``preprocessor_config.json``) or family default.
        std: normalisation std.
        normalize: apply the normalisation.
        trust_remote_code: passed to Hugging Face loaders.
        dtype: parameter dtype.

    Raises:
        ModelConfigError: unknown kind or inconsistent settings.
    """
    options = dict(options or {})
    if kind == "hf":
        if path is not None and mean is None and std is None:
            found = read_image_processor_normalization(path)
            if found is not None:
                mean, std = found
        model = load_hf_vision_model(
            path, None if path is not None else options, trust_remote_code=trust_remote_code, dtype=dtype
        )
        return HFVisionEncoder(model, feature=feature, mean=mean, std=std, normalize=normalize, image_size=image_size)

    common = {"feature": feature, "normalize": normalize}
    if mean is not None:
        common.update(mean=mean, std=std)
    if kind == "small_cnn":
        if path is not None:
            raise ModelConfigError("small_cnn takes no encoder path (its weights are saved with the generator)")
        encoder: VisionEncoder = SmallCNNEncoder(
            image_size=image_size or 128, channels=tuple(options.pop("channels", (32, 64, 128, 256))), **common
        )
        if options:
            raise ModelConfigError(f"unknown small_cnn options {sorted(options)}")
    elif kind.startswith("monai_densenet"):
        from monai.networks import nets

        cls = {"121": nets.DenseNet121, "169": nets.DenseNet169, "201": nets.DenseNet201}.get(kind[-3:])
        if cls is None:
            raise ModelConfigError(f"unknown encoder kind {kind!r}")
        in_channels = int(options.pop("in_channels", 1))
        options.setdefault("out_channels", 1)  # the classifier head is not used
        net = cls(spatial_dims=2, in_channels=in_channels, **options)
        if path is not None:
            _load_into(net.features, load_weights_file(path), "features.", os.fspath(path))
        out_dim = net.class_layers.out.in_features
        encoder = FeatureMapEncoder(
            net.features, out_dim, in_channels=in_channels, image_size=image_size, activation=nn.ReLU(), **common
        )
    elif kind == "monai_vit":
        from monai.networks.nets import ViT

        if image_size is None:
            raise ModelConfigError("monai_vit needs an image_size")
        in_channels = int(options.pop("in_channels", 1))
        options.setdefault("patch_size", 16)
        options["classification"] = False
        net = ViT(in_channels=in_channels, img_size=_as_size(image_size), spatial_dims=2, **options)
        if path is not None:
            _load_into(net, load_weights_file(path), "", os.fspath(path))
        encoder = MonaiViTEncoder(net, image_size=image_size, in_channels=in_channels, **common)
    else:
        raise ModelConfigError(f"unknown encoder kind {kind!r} (choose from {', '.join(ENCODER_KINDS)})")
    if dtype is not None:
        encoder = encoder.to(dtype)
    return encoder
