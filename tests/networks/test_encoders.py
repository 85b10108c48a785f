"""Vision encoder adapters: token layout, view masking, preprocessing, loading."""

from __future__ import annotations

import copy

import pytest
import torch

from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.encoders import (
    HFVisionEncoder,
    SmallCNNEncoder,
    build_encoder,
    load_weights_file,
    sincos_position_encoding_2d,
)

from .conftest import ENCODER_FAMILIES, IMAGE_SIZE

# tokens per view of the tiny 32 px models: patch 8 -> 4x4 grid (+1 class token); Swin patch 4, one merge -> 4x4
EXPECTED_TOKENS = {"swin": 16, "vit": 17, "clip_vision_model": 17, "siglip_vision_model": 16, "dinov2": 17}


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_hf_encoder_from_directory(encoder_dirs, family):
    encoder = build_encoder("hf", encoder_dirs[family]).eval()
    assert isinstance(encoder, HFVisionEncoder)
    assert encoder.in_channels == 3 and encoder.out_dim == 32
    images = torch.rand(2, 3, 1, IMAGE_SIZE, IMAGE_SIZE)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        tokens = encoder(images, mask)
        alone = encoder(images[1:, :1])
    assert tokens.shape == (2, 3, EXPECTED_TOKENS[family], 32)
    assert encoder.num_tokens == EXPECTED_TOKENS[family]
    assert torch.count_nonzero(tokens[0, 2]) == 0 and torch.count_nonzero(tokens[1, 1:]) == 0
    torch.testing.assert_close(tokens[1, 0], alone[0, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["swin", "siglip_vision_model"])
def test_hf_encoder_pooled_output(encoder_dirs, family):
    encoder = build_encoder("hf", encoder_dirs[family], feature="pooled").eval()
    with torch.no_grad():
        tokens = encoder(torch.rand(2, 1, 1, IMAGE_SIZE, IMAGE_SIZE))
    assert tokens.shape == (2, 1, 1, 32)
    assert encoder.num_tokens == 1


def test_dual_encoder_directory_gives_vision_tower(tmp_path):
    from transformers import AutoConfig, AutoModel

    vision = {"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 64}  # fmt: skip
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    clip = AutoModel.from_config(AutoConfig.for_model("clip", vision_config=vision, text_config=text)).eval()
    clip.save_pretrained(tmp_path)
    encoder = build_encoder("hf", tmp_path, feature="pooled", normalize=False).eval()
    assert type(encoder.model).__name__ == "CLIPVisionModel"
    x = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x[:, None])[0, 0, 0], clip.vision_model(pixel_values=x).pooler_output[0])


def test_preprocessing_replicates_and_normalizes(encoder_dirs):
    encoder = build_encoder("hf", encoder_dirs["vit"])  # its preprocessor_config.json says mean 0.4, std 0.2
    mean, std = encoder.normalization
    assert mean == pytest.approx([0.4] * 3) and std == pytest.approx([0.2] * 3)
    x = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    out = encoder.preprocess(x)
    assert out.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(out[:, 2], (x[:, 0] - 0.4) / 0.2)
    # a family default when the directory has no image processor config (Swin: ImageNet statistics)
    swin = build_encoder("hf", encoder_dirs["swin"])
    assert swin.normalization[0] == pytest.approx([0.485, 0.456, 0.406])
    # already-normalised data: no normalisation in the encoder
    assert build_encoder("hf", encoder_dirs["vit"], normalize=False).normalization is None


def test_inputs_of_another_size_are_resized(encoder_dirs):
    encoder = build_encoder("hf", encoder_dirs["vit"]).eval()
    with torch.no_grad():
        tokens = encoder(torch.rand(1, 1, 1, 48, 40))
    assert tokens.shape == (1, 1, 17, 32)


def test_small_cnn_grid_and_positions():
    encoder = SmallCNNEncoder()  # the embedded default: 128 px, four stride-2 stages
    assert encoder.num_tokens == 64 and encoder.out_dim == 256
    with torch.no_grad():
        tokens = encoder(torch.zeros(1, 2, 1, 128, 128), torch.tensor([[True, False]]))
    assert tokens.shape == (1, 2, 64, 256)
    # a constant image gives a constant feature map inside the grid; the position encoding tells tokens apart
    assert len({tuple(t.round(decimals=4).tolist()) for t in tokens[0, 0]}) == 64
    pos = sincos_position_encoding_2d(8, 8, 256)
    assert pos.shape == (64, 256) and not torch.allclose(pos[0], pos[1])


def test_small_cnn_channels_last_gives_the_channels_first_values():
    torch.manual_seed(0)
    encoder = SmallCNNEncoder(channels=(8, 16)).eval()
    assert encoder.channels_last and encoder.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(encoder)
    plain.features.to(memory_format=torch.contiguous_format)
    plain.channels_last = False
    images = torch.rand(2, 1, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), plain(images), atol=1e-5, rtol=1e-4)
    copied = SmallCNNEncoder(channels=(8, 16)).eval()  # a state dict (contiguous, as saved) loads into the layout
    copied.load_state_dict({k: v.contiguous() for k, v in plain.state_dict().items()})
    assert copied.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(copied(images), plain(images), atol=1e-5, rtol=1e-4)


def test_encoder_output_independent_of_batch_neighbours():
    encoder = build_encoder("small_cnn", image_size=IMAGE_SIZE, options={"channels": [8, 16]})
    images = torch.rand(3, 1, 1, IMAGE_SIZE, IMAGE_SIZE)
    encoder.train()
    with torch.no_grad():
        encoder(images * 3.0)  # batch statistics of training move the running statistics
    encoder.eval()
    with torch.no_grad():
        together = encoder(images)
        alone = encoder(images[:1])
    torch.testing.assert_close(together[:1], alone)


def test_frozen_encoder_stays_in_eval_mode_and_keeps_its_statistics():
    encoder = build_encoder("small_cnn", image_size=IMAGE_SIZE, options={"channels": [8, 16]})
    images = torch.rand(4, 1, 1, IMAGE_SIZE, IMAGE_SIZE)
    encoder.train()
    assert encoder.training
    encoder.requires_grad_(False)
    encoder.train()  # what a trainer calls every iteration
    assert not encoder.training and not any(m.training for m in encoder.modules())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        first = encoder(images)
        encoder(images * 5.0 + 1.0)
        second = encoder(images)
    torch.testing.assert_close(first, second)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key])
    encoder.requires_grad_(True)
    assert encoder.train().training  # trainable again: training mode (batch statistics) is back


def test_monai_densenet_feature_grid_and_weights(tmp_path):
    from monai.networks.nets import DenseNet121

    # weights saved from a whole MONAI DenseNet121 (14-class head included) load into the encoder's features
    trained = DenseNet121(spatial_dims=2, in_channels=1, out_channels=14).eval()
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "densenet.pt")
    encoder = build_encoder("monai_densenet121", tmp_path / "densenet.pt", image_size=64).eval()
    assert encoder.out_dim == 1024
    x = torch.rand(1, 1, 1, 64, 64)
    with torch.no_grad():
        tokens = encoder(x)
        expected = torch.relu(trained.features(x[0]))  # (1, 1024, 2, 2): 64 px / 32
    assert tokens.shape == (1, 1, 4, 1024)
    torch.testing.assert_close(tokens[0, 0], expected.flatten(2).transpose(1, 2)[0])


def test_monai_vit_tokens(tmp_path):
    pytest.importorskip("einops")
    options = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2}
    encoder = build_encoder("monai_vit", image_size=IMAGE_SIZE, options=dict(options)).eval()
    with torch.no_grad():
        tokens = encoder(torch.rand(2, 2, 1, IMAGE_SIZE, IMAGE_SIZE))
    assert tokens.shape == (2, 2, 16, 32)
    assert encoder.lora_target_modules() == ["qkv"]
    from safetensors.torch import save_file

    save_file(encoder.net.state_dict(), str(tmp_path / "vit.safetensors"))
    again = build_encoder("monai_vit", tmp_path / "vit.safetensors", image_size=IMAGE_SIZE, options=dict(options))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(torch.ones(1, 1, 1, IMAGE_SIZE, IMAGE_SIZE)),
                                   encoder(torch.ones(1, 1, 1, IMAGE_SIZE, IMAGE_SIZE)))  # fmt: skip


def test_torch_weights_are_loaded_without_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "object": ModelConfigError("x")}, path)
    with pytest.raises(ModelConfigError, match="evil.pt"):
        load_weights_file(path)
    with pytest.raises(ModelConfigError, match="not found"):
        load_weights_file(tmp_path / "missing.safetensors")


def test_mismatched_weights_and_bad_settings(tmp_path):
    from safetensors.torch import save_file

    save_file({"features.conv0.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelConfigError, match="bad.safetensors"):
        build_encoder("monai_densenet121", tmp_path / "bad.safetensors")
    with pytest.raises(ModelConfigError, match="unknown encoder kind"):
        build_encoder("resnet_from_nowhere")
    with pytest.raises(ModelConfigError, match="not found"):
        build_encoder("hf", tmp_path / "nothing_here")
    with pytest.raises(ModelConfigError, match="model_type"):
        build_encoder("hf", options={"image_size": 32})
    with pytest.raises(ModelConfigError, match="feature"):
        build_encoder("small_cnn", feature="cls")


def test_a_language_model_directory_is_not_an_encoder(llm_dirs):
    with pytest.raises(ModelConfigError, match="not a vision model"):
        build_encoder("hf", llm_dirs["llama"])
