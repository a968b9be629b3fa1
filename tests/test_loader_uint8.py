"""Frames stay uint8 through the loader and are normalised where the model runs: the float frames the model sees
are, tensor for tensor, those the loader used to make (decode, resize, crop, then normalise on the CPU), and an
item built in the training process is built at one thread without changing the caller's thread count."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from avlformer.data import dataset as dataset_module
from avlformer.data.dataset import CaptionDataset, DataConfig, collate
from avlformer.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, clip_from_frames, crop_offsets, decode_jpegs,
                                       frames_for_model, normalize, resize_short_side)
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from test_data_loader import tokenizer, write_tiny_dataset  # noqa: F401 (tokenizer is a fixture)


def jpeg_b64(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    return base64.b64encode(buffer.getvalue())


def textured_frames(count: int, height: int = 60, width: int = 80, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [jpeg_b64(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def float_loader_clip(frames, *, num_frames, image_size, train, rng=None) -> torch.Tensor:
    """What the loader returned before frames stayed uint8: the same pixels, normalised on the CPU as
    (x / 255 - mean) / std folded into x * (1 / (255 std)) + (-mean / std)."""
    step = (len(frames) - 1) / (num_frames - 1)
    decoded = decode_jpegs([frames[round(k * step)] for k in range(num_frames)])
    resized = resize_short_side(decoded, image_size)
    top, left = crop_offsets(resized.shape[-2], resized.shape[-1], image_size, train, rng)
    pixels = resized[..., top:top + image_size, left:left + image_size].to(torch.float32).contiguous()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return torch.addcmul(-mean / std, pixels, 1.0 / (255.0 * std))


@pytest.mark.parametrize("train", [False, True])
def test_uint8_clip_normalised_in_the_model_equals_the_float_loader(train):
    frames = textured_frames(10)
    clip = clip_from_frames(frames, num_frames=6, image_size=48, train=train, rng=np.random.default_rng(3))
    assert clip.dtype == torch.uint8 and clip.is_contiguous()
    expected = float_loader_clip(frames, num_frames=6, image_size=48, train=train, rng=np.random.default_rng(3))
    assert torch.equal(frames_for_model(clip), expected)
    assert torch.equal(frames_for_model(collate([{"video_key": "a", "frames": clip}])["frames"])[0], expected)
    # The fold is (x / 255 - mean) / std up to float rounding.
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(expected, (clip.float() / 255 - mean) / std, atol=1e-5)


def test_normalize_takes_any_strides_and_floats_pass_through():
    clip = torch.randint(0, 256, (2, 4, 3, 9, 7), dtype=torch.uint8)
    strided = clip.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not strided.is_contiguous() and torch.equal(normalize(strided), normalize(clip))
    assert normalize(strided).is_contiguous()
    floats = torch.randn(2, 4, 3, 9, 7)
    assert frames_for_model(floats) is floats


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return AVLFormer(AVLFormerConfig.tiny()).eval()


def test_the_model_normalises_uint8_frames_itself(tiny_model):
    config = tiny_model.config
    generator = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, config.num_frames, 3, config.image_size, config.image_size),
                           dtype=torch.uint8, generator=generator)
    audio = torch.randn(2, 1, config.audio.clip_samples, generator=generator) * 0.1
    with torch.no_grad():
        from_uint8 = tiny_model.encode_av(frames, audio)
        from_float = tiny_model.encode_av(normalize(frames), audio)
        assert torch.equal(from_uint8, from_float)
        video_uint8, _ = tiny_model.encoder_outputs(frames, audio)
        video_float, _ = tiny_model.encoder_outputs(normalize(frames), audio)
        assert torch.equal(video_uint8, video_float)
        # Without the normalisation the encoder would see raw 0..255 values: a different result.
        assert not torch.equal(tiny_model.encode_av(frames.float(), audio), from_float)


TINY = DataConfig(num_frames=4, image_size=32, clip_seconds=0.25, max_seq_length=24)


def test_items_built_in_the_training_process_use_one_thread_and_restore_the_count(tmp_path, tokenizer,
                                                                                  monkeypatch):
    data = CaptionDataset(write_tiny_dataset(tmp_path / "datasets"), TINY, is_train=True, tokenizer=tokenizer)
    seen = []
    original = CaptionDataset._item

    def recording(self, index):
        seen.append(torch.get_num_threads())
        return original(self, index)

    monkeypatch.setattr(CaptionDataset, "_item", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data.set_seed(7)
        two = data[1]
        assert torch.get_num_threads() == 2 and seen == [1]
        batch = collate([two, two])
        assert torch.get_num_threads() == 2 and torch.equal(batch["frames"][1], two["frames"])
        torch.set_num_threads(1)
        data.set_seed(7)
        one = data[1]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(two[k], one[k]) for k in ("frames", "audio", "input_ids", "masked_pos"))
    assert two["frames"].dtype == torch.uint8


def test_one_thread_context_restores_the_count_after_an_error(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with dataset_module.one_thread_outside_workers():
                assert torch.get_num_threads() == 1
                raise RuntimeError("bad clip")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
