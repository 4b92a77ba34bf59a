"""Image decoding limits and the CLIP vision runtime, on a tiny random open_clip ViT."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import EpsImagePlugin, Image
from pydantic import ValidationError

import modalities.vision.decode as image_module
from modalities.errors import MediaError
from modalities.vision import ClipConfig, ClipRuntime
from modalities.vision.decode import ImageLimits, decode_image
from tests.helpers.media import encoded, jpeg_declaring, png_declaring
from tests.helpers.memory import peak_bytes

TINY_CLIP_JSON = Path(__file__).resolve().parents[1] / "assets" / "tiny_clip.json"
TINY_ARCH = TINY_CLIP_JSON.stem
TINY_CFG = json.loads(TINY_CLIP_JSON.read_text())
IMAGE_SIZE = TINY_CFG["vision_cfg"]["image_size"]
PATCH = TINY_CFG["vision_cfg"]["patch_size"]
WIDTH = TINY_CFG["vision_cfg"]["width"]
LAYERS = TINY_CFG["vision_cfg"]["layers"]
EMBED_DIM = TINY_CFG["embed_dim"]
NUM_PATCHES = (IMAGE_SIZE // PATCH) ** 2
# A header-only bomb must be rejected long before pixel memory: the decode of the smallest bomb
# below would need 192 MB.
BOMB_PEAK_BYTES = 2 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# helpers


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)







@pytest.fixture(scope="module")
def tiny():
    """(model, eval preprocess) of the tiny random CLIP, deterministic."""
    open_clip.add_model_config(TINY_CLIP_JSON)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH)
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def runtime(tiny):
    model, preprocess = tiny
    return ClipRuntime(model, preprocess)


def tiny_config(**overrides) -> ClipConfig:
    fields = {"model_name": str(TINY_CLIP_JSON), "pretrained": None, "random_init": True}
    return ClipConfig(**(fields | overrides))


# ---------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decode_allowed_formats(fmt):
    image = decode_image(encoded(noise_image(13, 7), fmt))
    assert image.mode == "RGB"
    assert image.size == (13, 7)


def test_decode_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((0, 0)) == (255, 0, 0)


def test_decode_composites_transparency_onto_white():
    data = encoded(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "PNG")
    assert decode_image(data).getpixel((1, 1)) == (255, 255, 255)


def test_decode_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored rotated, display turned 90 degrees clockwise
    data = encoded(Image.new("RGB", (20, 10)), "JPEG", exif=exif)
    assert decode_image(data).size == (10, 20)


@pytest.mark.parametrize(
    ("bomb", "declared"),
    [
        (png_declaring(100_000, 100_000), "over Pillow's own limit"),
        (png_declaring(8_000, 8_000), "over ours, under Pillow's"),
        (jpeg_declaring(60_000, 60_000), "JPEG"),
    ],
)
def test_decompression_bomb_rejected_from_header(bomb, declared):
    assert len(bomb) < 1024

    def decode():
        with pytest.raises(MediaError) as info:
            decode_image(bomb)
        assert info.value.code == "image_too_large"

    assert peak_bytes(decode) < BOMB_PEAK_BYTES, declared


def test_pixel_limit_is_configurable():
    data = encoded(noise_image(10, 10), "PNG")
    decode_image(data, ImageLimits(max_pixels=100))
    with pytest.raises(MediaError, match="limit is 99"):
        decode_image(data, ImageLimits(max_pixels=99))


def test_byte_limit():
    data = encoded(noise_image(16, 16), "PNG")
    with pytest.raises(MediaError, match="bytes") as info:
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert info.value.code == "image_too_large"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_rejected(fmt):
    data = encoded(noise_image(64, 64), fmt)
    with pytest.raises(MediaError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"", np.random.default_rng(1).bytes(4096), b"\x89PNG\r\n\x1a\n"],
    ids=["empty", "random", "png-signature-only"],
)
def test_garbage_rejected(data):
    with pytest.raises(MediaError) as info:
        decode_image(data, param="messages[0].content[1]")
    assert info.value.param == "messages[0].content[1]"
    assert "\\x" not in info.value.message  # never echoes the bytes


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("TIFF", "TIFF"), ("PDF", "PDF"), ("EPS", "EPS"), ("BMP", "BMP"), ("PPM", None)],
)
def test_disallowed_formats_rejected(fmt, name):
    data = encoded(noise_image(8, 8), fmt)
    with pytest.raises(MediaError) as info:
        decode_image(data)
    assert info.value.code == "unsupported_image_format"
    if name:
        assert name in info.value.message


def test_eps_never_reaches_ghostscript(monkeypatch):
    """Even with the friendly format sniffing out of the way, the allowlist alone keeps EPS out."""

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(image_module, "_REFUSED_SIGNATURES", ())
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    with pytest.raises(MediaError) as info:
        decode_image(eps)
    assert info.value.code == "unsupported_image_format"


# ---------------------------------------------------------------------------------------------
# runtime: shapes, odd images


def test_one_by_one_image_end_to_end(runtime):
    patches, pooled = runtime.encode([encoded(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG")])
    assert patches.shape == (1, NUM_PATCHES, WIDTH)
    assert pooled.shape == (1, EMBED_DIM)
    assert torch.isfinite(patches).all()


def test_extreme_aspect_image_end_to_end(runtime):
    """1x100000 is a valid image well under the pixel limit: it must encode, quickly."""
    data = encoded(noise_image(1, 100_000, seed=3), "PNG")
    start = time.perf_counter()
    patches, pooled = runtime.encode([data])
    assert time.perf_counter() - start < 2.0
    assert patches.shape == (1, NUM_PATCHES, WIDTH)
    assert torch.isfinite(pooled).all()


def test_aspect_crop_does_not_change_clip_preprocessing(runtime, tiny):
    """Centre-crop before resize-shortest-then-centre-crop equals the transform on the full image."""
    _, preprocess = tiny
    image = noise_image(1000, 10, seed=4)  # 100:1, over the 20:1 bound, so the crop applies
    torch.testing.assert_close(runtime.preprocess([image])[0], preprocess(image), atol=1e-4, rtol=0)


def test_patch_features_shape_and_cls_dropped(tiny):
    model, preprocess = tiny
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with_cls = ClipRuntime(model, preprocess, drop_cls=False).patch_features(pixels)
    without = ClipRuntime(model, preprocess).patch_features(pixels)
    assert without.shape == (2, NUM_PATCHES, WIDTH)
    assert with_cls.shape == (2, NUM_PATCHES + 1, WIDTH)
    torch.testing.assert_close(without, with_cls[:, 1:])


def manual_hidden_states(model, pixels) -> list[torch.Tensor]:
    """Outputs of every block of the image tower, computed by hand (LLaVA's hidden_states[1:])."""
    visual = model.visual
    with torch.no_grad():
        x = visual._embeds(pixels)
        states = []
        for block in visual.transformer.resblocks:
            x = block(x)
            states.append(x)
    return states


@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_feature_layer_matches_manual_forward(tiny, layer):
    model, preprocess = tiny
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    expected = manual_hidden_states(model, pixels)[layer][:, 1:]
    got = ClipRuntime(model, preprocess, feature_layer=layer).patch_features(pixels)
    torch.testing.assert_close(got, expected)


def test_last_and_second_to_last_layers_differ(tiny):
    model, preprocess = tiny
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    last = ClipRuntime(model, preprocess, feature_layer=-1).patch_features(pixels)
    second = ClipRuntime(model, preprocess, feature_layer=-2).patch_features(pixels)
    assert not torch.allclose(last, second)


@pytest.mark.parametrize("layer", [LAYERS, -LAYERS - 1])
def test_feature_layer_out_of_range(tiny, layer):
    model, preprocess = tiny
    with pytest.raises(ValueError, match=f"{-LAYERS}..{LAYERS - 1}"):
        ClipRuntime(model, preprocess, feature_layer=layer)


def test_pooled_is_the_normalised_clip_embedding(runtime, tiny):
    model, _ = tiny
    images = [noise_image(40, 30, seed=6), noise_image(30, 40, seed=7)]
    pixels = runtime.preprocess(images)
    assert pixels.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    pooled = runtime.pooled(pixels)
    assert pooled.shape == (2, EMBED_DIM)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        torch.testing.assert_close(pooled, model.encode_image(pixels, normalize=True))
    patches, encoded_pooled = runtime.encode_images(images)
    torch.testing.assert_close(encoded_pooled, pooled)
    torch.testing.assert_close(patches, runtime.patch_features(pixels))


def test_encode_names_the_bad_image(runtime):
    good = encoded(noise_image(8, 8), "PNG")
    with pytest.raises(MediaError, match="^image 1: "):
        runtime.encode([good, b"not an image"])


def test_concurrent_callers_get_their_own_features(runtime):
    """The hook's capture is per thread: concurrent calls must not swap activations."""
    pixels = [torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    expected = [runtime.patch_features(p) for p in pixels]
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(pixels))}

    def work(i: int) -> None:
        for _ in range(20):
            results[i].append(runtime.patch_features(pixels[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pixels))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, outputs in results.items():
        for out in outputs:
            torch.testing.assert_close(out, expected[i])


# ---------------------------------------------------------------------------------------------
# config and loading


def test_random_weights_need_explicit_request():
    with pytest.raises(ValidationError, match="no CLIP weights configured"):
        ClipConfig(model_name=str(TINY_CLIP_JSON), pretrained=None)
    with pytest.raises(ValidationError, match="extra"):
        ClipConfig(model_name=str(TINY_CLIP_JSON), pretrained="openai", layer=-2)


def test_from_config_random_init_reports_no_weights():
    runtime = ClipRuntime.from_config(tiny_config(feature_layer=-1))
    assert runtime.has_weights is False
    assert (runtime.num_patches, runtime.width, runtime.embed_dim) == (NUM_PATCHES, WIDTH, EMBED_DIM)


def test_from_config_local_checkpoint_roundtrip(tiny, tmp_path):
    model, preprocess = tiny
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    loaded = ClipRuntime.from_config(tiny_config(pretrained=str(checkpoint), random_init=False))
    assert loaded.has_weights is True
    reference = ClipRuntime(model, preprocess)
    images = [noise_image(50, 40, seed=8)]
    for got, want in zip(loaded.encode_images(images), reference.encode_images(images), strict=True):
        torch.testing.assert_close(got, want)


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    other_json = tmp_path / "tiny_clip_wide.json"
    other_cfg = json.loads(TINY_CLIP_JSON.read_text())
    other_cfg["vision_cfg"]["width"] = 2 * WIDTH
    other_json.write_text(json.dumps(other_cfg))
    open_clip.add_model_config(other_json)
    checkpoint = tmp_path / "wide.pt"
    torch.save(open_clip.create_model(other_json.stem).state_dict(), checkpoint)
    with pytest.raises(ValueError, match="does not fit architecture"):
        ClipRuntime.from_config(tiny_config(pretrained=str(checkpoint), random_init=False))


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        ClipRuntime.from_config(tiny_config(pretrained=str(tmp_path / "nope.pt"), random_init=False))


@pytest.fixture
def no_downloads(monkeypatch):
    """Fail fast instead of touching the network; records the tags open_clip tried to fetch."""
    attempts = []

    def refuse(cfg, *args, **kwargs):
        attempts.append(cfg)
        raise RuntimeError("offline (test)")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", refuse)
    return attempts


def test_unknown_tag_refused_before_any_download(no_downloads):
    with pytest.raises(ValueError, match="unknown open_clip pretrained tag 'laion9000'.*openai"):
        ClipRuntime.from_config(ClipConfig(model_name="ViT-B-32", pretrained="laion9000"))
    assert no_downloads == []


def test_known_tag_without_hub_gives_actionable_error(no_downloads):
    with pytest.raises(RuntimeError, match="set vision.pretrained to a local checkpoint path"):
        ClipRuntime.from_config(tiny_config(model_name="ViT-B-32", pretrained="openai", random_init=False))
    assert len(no_downloads) == 1


def test_quickgelu_tag_builds_a_quickgelu_model(monkeypatch):
    """OpenAI's weights were trained with QuickGELU; open_clip only warns if the arch says GELU."""
    seen = {}

    def fake_create(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here (test)")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(RuntimeError):
        ClipRuntime.from_config(ClipConfig(model_name="ViT-B-32", pretrained="openai"))
    assert seen["force_quick_gelu"] is True
    with pytest.raises(RuntimeError):
        ClipRuntime.from_config(ClipConfig(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert seen["force_quick_gelu"] is False


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        ClipRuntime.from_config(tiny_config(model_name="ViT-Q-99"))


def test_non_vit_tower_refused(tmp_path):
    resnet_json = tmp_path / "tiny_clip_resnet.json"
    resnet_cfg = json.loads(TINY_CLIP_JSON.read_text())
    resnet_cfg["vision_cfg"] = {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}
    resnet_json.write_text(json.dumps(resnet_cfg))
    with pytest.raises(ValueError, match="ViT image tower.*ModifiedResNet"):
        ClipRuntime.from_config(tiny_config(model_name=str(resnet_json)))
