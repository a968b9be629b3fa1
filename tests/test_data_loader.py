"""Loaders: audio decode/augmentation, frame transforms, CaptionDataset + collate end to end (MLM masking:
test_data_masking.py)."""

from __future__ import annotations

import base64
import io
import json
import math
import warnings

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from media_fixtures import write_tsv
from torch.utils.data import DataLoader

from avlformer.data import media_audio
from avlformer.data.audio import GAIN_DB_RANGE, ROLL_SAMPLES_RANGE, decode_audio, load_clip, pad_or_truncate
from avlformer.data.audio_hdf import HDF5AudioReader, write_audio_hdf
from avlformer.data.clip_ids import clip_id_from_key
from avlformer.data.dataset import CaptionDataset, DataConfig, collate, resolve_paths, seed_worker
from avlformer.data.masking import encode_caption
from avlformer.data.media_audio import encode_mp3
from avlformer.data.recipe import PreprocessRecipe, recipe_path_for_yaml
from avlformer.data.tokenizer import load_tokenizer
from avlformer.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, clip_from_frames, crop_offsets, decode_jpegs,
                                       normalize, resize_short_side, sample_indices)


# ------------------------------------------------------------------------------------------------ helpers
def sine(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def jpeg_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def textured_frame(height: int, width: int, level: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 7) % 256, (y * 5) % 256, (x + y + level) % 256], axis=-1)
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


# ------------------------------------------------------------------------------------------------ audio
@pytest.mark.parametrize("rate", [32000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_gives_mono_32k_at_the_right_pitch(rate, channels):
    seconds = 0.5
    wave = np.repeat(sine(seconds, rate)[None], channels, axis=0)
    decoded = decode_audio(encode_mp3(wave, rate))
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - seconds * 32000) <= 0.01 * 32000  # not doubled by channel flattening
    assert abs(dominant_frequency(decoded, 32000) - 440.0) < 5.0  # resampled, not replayed at 32 kHz
    # Identical channels downmix to the channel itself (mean), not to a -3 dB centre mix.
    assert np.sqrt(np.mean(decoded ** 2)) == pytest.approx(0.3 / math.sqrt(2), rel=0.1)


def test_stereo_downmix_is_the_channel_mean():
    left = sine(0.5, 32000)
    decoded = decode_audio(encode_mp3(np.stack([left, np.zeros_like(left)]), 32000))
    assert np.sqrt(np.mean(decoded ** 2)) == pytest.approx(0.5 * 0.3 / math.sqrt(2), rel=0.1)


def level_db(wave: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(wave.astype(np.float64) ** 2))))


@pytest.mark.parametrize("rate", [32000, 44100])
def test_stereo_with_identical_channels_keeps_the_level_of_its_mono_source(rate):
    # One downmix (the channel mean) for prepare and inference (media_audio.extract_audio) and for the loaders
    # (decode_audio); libswresample's own mono mix made such a file about 3 dB louder.
    wave = sine(1.0, rate)
    mono, stereo = encode_mp3(wave, rate), encode_mp3(np.stack([wave, wave]), rate)
    middle = slice(3200, 28800)  # away from the encoder's start-up and tail
    for decode in (lambda data: decode_audio(media_audio.extract_audio(data).mp3), decode_audio):
        assert abs(level_db(decode(stereo)[middle]) - level_db(decode(mono)[middle])) < 0.2


def test_undecodable_audio_names_its_source():
    with pytest.raises(ValueError, match="row7.mp3: cannot decode"):
        decode_audio(b"not audio at all" * 50, source="row7.mp3")


def test_pad_or_truncate_lengths():
    wave = np.arange(10, dtype=np.float32)
    padded = pad_or_truncate(wave, 15)
    assert padded.shape == (15,) and np.array_equal(padded[:10], wave) and not padded[10:].any()
    assert np.array_equal(pad_or_truncate(wave, 4), wave[:4])
    assert np.array_equal(pad_or_truncate(wave, 10), wave)


def test_load_clip_pads_and_truncates_to_clip_samples():
    data = encode_mp3(sine(0.5, 32000), 32000)
    for samples in (8000, 32000):
        clip = load_clip(data, clip_samples=samples)
        assert clip.shape == (1, samples) and clip.dtype == torch.float32
    assert not load_clip(data, clip_samples=32000)[0, 17000:].any()


def test_eval_audio_is_deterministic_and_unaugmented():
    data = encode_mp3(sine(0.5, 32000), 32000)
    reference = load_clip(data, clip_samples=16000)
    for seed in range(3):
        again = load_clip(data, clip_samples=16000, train=False, rng=np.random.default_rng(seed))
        assert torch.equal(again, reference)


def test_train_audio_gain_is_an_integer_db_and_roll_a_small_circular_shift():
    data = encode_mp3(sine(0.5, 32000, freq=97.0), 32000)
    reference = load_clip(data, clip_samples=16000).numpy()[0]
    rng = np.random.default_rng(0)
    gains, shifts = set(), set()
    for _ in range(60):
        clip = load_clip(data, clip_samples=16000, train=True, rng=rng).numpy()[0]
        gain_db = round(20 * np.log10(np.abs(clip).max() / np.abs(reference).max()))
        scaled = reference * np.float32(10.0 ** (gain_db / 20.0))
        matches = [s for s in range(*ROLL_SAMPLES_RANGE) if np.array_equal(np.roll(scaled, s), clip)]
        assert len(matches) == 1
        gains.add(gain_db)
        shifts.add(matches[0])
    assert gains <= set(range(GAIN_DB_RANGE[0], GAIN_DB_RANGE[1] + 1)) and len(gains) > 5
    assert len(shifts) > 3


def test_train_augmentation_needs_an_rng():
    with pytest.raises(ValueError, match="rng"):
        load_clip(encode_mp3(sine(0.1, 32000)), clip_samples=100, train=True)


def test_hdf5_reader_round_trip(tmp_path):
    payloads = [encode_mp3(sine(0.2, 32000, freq=f), 32000) for f in (300.0, 600.0)]
    write_audio_hdf(tmp_path / "a.hdf", ["v0", "v1"], payloads)
    reader = HDF5AudioReader(tmp_path / "a.hdf")
    assert reader.names == ["v0", "v1"]
    assert reader.mp3(1).tobytes() == payloads[1]
    assert abs(dominant_frequency(decode_audio(reader.mp3(1)), 32000) - 600.0) < 10


def test_hdf5_reader_errors_name_the_file(tmp_path):
    with h5py.File(tmp_path / "bad.hdf", "w") as handle:
        handle.create_dataset("audio_name", data=["x"], dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match=r"bad\.hdf.*missing dataset.*mp3"):
        HDF5AudioReader(tmp_path / "bad.hdf").names
    with pytest.raises(FileNotFoundError, match="absent.hdf"):
        HDF5AudioReader(tmp_path / "absent.hdf")


# ------------------------------------------------------------------------------------------------ frames
def test_sample_indices_rule():
    assert sample_indices(32, 32) == list(range(32))
    for stored, wanted in ((64, 32), (50, 32), (10, 32), (7, 3)):
        indices = sample_indices(stored, wanted)
        step = (stored - 1) / (wanted - 1)
        assert indices == [round(k * step) for k in range(wanted)]
        assert indices[0] == 0 and indices[-1] == stored - 1 and indices == sorted(indices)


def test_clip_shape_dtype_and_temporal_sampling():
    levels = [10 + 20 * i for i in range(8)]
    frames = [jpeg_b64(np.full((40, 60, 3), level, np.uint8)) for level in levels]
    clip = clip_from_frames(frames, num_frames=4, image_size=32, train=False)
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.uint8 and clip.is_contiguous()
    # Channel 0's level tells which stored frame each output frame came from.
    recovered = clip[:, 0].float().mean(dim=(1, 2))
    expected = torch.tensor([levels[i] for i in sample_indices(8, 4)], dtype=torch.float32)
    assert torch.allclose(recovered, expected, atol=2.0)


def test_resize_short_side_truncates_the_long_side():
    clip = torch.zeros(2, 3, 256, 341, dtype=torch.uint8)
    assert resize_short_side(clip, 224).shape[-2:] == (224, int(224 * 341 / 256))
    tall = torch.zeros(1, 3, 300, 200, dtype=torch.uint8)
    assert resize_short_side(tall, 100).shape[-2:] == (150, 100)
    assert resize_short_side(clip[..., :224, :], 224).data_ptr() == clip.data_ptr()  # already the size: no-op


def test_normalize_is_imagenet_mean_std():
    clip = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalize(clip), (clip.float() / 255 - mean) / std, atol=1e-5)


def test_train_crop_has_one_offset_for_the_whole_clip():
    image = textured_frame(48, 64)
    frames = [jpeg_b64(image)] * 6
    decoded = resize_short_side(decode_jpegs(frames), 32)
    seen = set()
    for seed in range(8):
        clip = clip_from_frames(frames, num_frames=6, image_size=32, train=True, rng=np.random.default_rng(seed))
        assert all(torch.equal(clip[0], clip[t]) for t in range(1, 6))
        top, left = crop_offsets(decoded.shape[-2], decoded.shape[-1], 32, True, np.random.default_rng(seed))
        assert torch.equal(clip, decoded[..., top:top + 32, left:left + 32])
        seen.add((top, left))
    assert len(seen) > 1  # the offset is random across clips


def test_eval_crop_is_centred_and_deterministic():
    frames = [jpeg_b64(textured_frame(48, 64, level)) for level in range(3)]
    first = clip_from_frames(frames, num_frames=3, image_size=32, train=False)
    second = clip_from_frames(frames, num_frames=3, image_size=32, train=False, rng=np.random.default_rng(5))
    assert torch.equal(first, second)
    decoded = resize_short_side(decode_jpegs(frames), 32)
    height, width = decoded.shape[-2:]
    top, left = round((height - 32) / 2), round((width - 32) / 2)
    assert crop_offsets(height, width, 32, False) == (top, left)
    assert torch.equal(first, decoded[..., top:top + 32, left:left + 32])


def test_bad_frames_become_black_with_a_warning_and_all_bad_is_an_error():
    good = jpeg_b64(np.full((32, 32, 3), 200, np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = decode_jpegs([good, "%%%", base64.b64encode(b"not a jpeg").decode()], source="clip-x")
    assert not decoded[1].any() and not decoded[2].any() and decoded[0].float().mean() > 150
    assert any("clip-x" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="clip-y: none of the 2"):
        decode_jpegs(["%%%", "@@@"], source="clip-y")


def test_crop_larger_than_frame_is_an_error():
    with pytest.raises(ValueError, match="smaller than the crop"):
        crop_offsets(20, 40, 32, False)


# ------------------------------------------------------------------------------------------------ dataset
COLOURS = {"train/v0.mp4": (200, 30, 30), "train/v1.mp4": (30, 200, 30), "train/v2.mp4": (30, 30, 200)}
CAPTIONS = {"train/v0.mp4": "A red screen hums.", "train/v1.mp4": "A green screen beeps twice.",
            "train/v2.mp4": "A blue screen is silent."}
FREQS = {"train/v0.mp4": 300.0, "train/v1.mp4": 700.0, "train/v2.mp4": 1100.0}


def write_tiny_dataset(root, *, frames_per_row=8, audio_order=None, with_linelist=True):
    """An upstream-layout dataset: frame_tsv/, audio_hdf/, metadata/ (yaml, caption tsv, linelist, label)."""
    keys = list(COLOURS)
    # Frame rows in another order than the captions: frames must be found by key, not by row.
    frame_rows = []
    for key in reversed(keys):
        image = np.zeros((40, 52, 3), np.uint8) + np.array(COLOURS[key], np.uint8)
        frame_rows.append([key, json.dumps({"class": -1, "width": 52, "height": 40})]
                          + [jpeg_b64(image)] * frames_per_row)
    write_tsv(root / "frame_tsv" / "train_32frames.img.tsv", frame_rows)
    (root / "audio_hdf").mkdir(parents=True)
    order = audio_order or keys
    write_audio_hdf(root / "audio_hdf" / "train_mp3.hdf", [clip_id_from_key(k) for k in order],
                    [encode_mp3(sine(0.3, 32000, FREQS[k]), 32000) for k in order])
    meta = root / "metadata"
    write_tsv(meta / "train.caption.tsv", [[k, json.dumps([{"caption": CAPTIONS[k]}])] for k in keys])
    write_tsv(meta / "train.label.tsv", [[k, json.dumps([{"caption": CAPTIONS[k]}])] for k in keys])
    lines = ["caption: train.caption.tsv", "label: train.label.tsv",
             "img: frame_tsv/train_32frames.img.tsv", "audio: audio_hdf/train_mp3.hdf"]
    if with_linelist:
        write_tsv(meta / "train.caption.linelist.tsv", [[str(i), "0"] for i in range(len(keys))])
        lines.append("caption_linelist: train.caption.linelist.tsv")
    (meta / "train_32frames.yaml").write_text("\n".join(lines) + "\n")
    return meta / "train_32frames.yaml"


TINY = DataConfig(num_frames=4, image_size=32, clip_seconds=0.25, max_seq_length=24)


def test_resolve_paths_follows_upstream_rules(tmp_path):
    yaml_path = write_tiny_dataset(tmp_path / "datasets")
    paths = resolve_paths(yaml_path)
    root = tmp_path / "datasets"
    assert paths.frames.samefile(root / "frame_tsv" / "train_32frames.img.tsv")
    assert paths.audio.samefile(root / "audio_hdf" / "train_mp3.hdf")
    assert paths.captions.samefile(root / "metadata" / "train.caption.tsv")
    assert paths.linelist.samefile(root / "metadata" / "train.caption.linelist.tsv")
    # A caption path given as an existing absolute path is used as given.
    moved = tmp_path / "elsewhere.caption.tsv"
    moved.write_bytes((root / "metadata" / "train.caption.tsv").read_bytes())
    text = yaml_path.read_text().replace("caption: train.caption.tsv", f"caption: {moved}")
    yaml_path.write_text(text)
    assert resolve_paths(yaml_path).captions == moved


def test_resolve_paths_errors_name_the_yaml(tmp_path):
    yaml_path = write_tiny_dataset(tmp_path / "datasets")
    yaml_path.write_text(yaml_path.read_text().replace("audio: audio_hdf/train_mp3.hdf", "audio: nope.hdf"))
    with pytest.raises(FileNotFoundError, match=r"train_32frames\.yaml.*nope\.hdf"):
        resolve_paths(yaml_path)


def check_train_batch(batch, config, batch_size):
    length = config.max_seq_length
    assert isinstance(batch["video_keys"], list) and len(batch["video_keys"]) == batch_size
    expected = {"frames": ((batch_size, config.num_frames, 3, config.image_size, config.image_size), torch.uint8),
                "audio": ((batch_size, 1, config.clip_samples), torch.float32),
                "input_ids": ((batch_size, length), torch.int64), "target_ids": ((batch_size, length), torch.int64),
                "masked_pos": ((batch_size, length), torch.bool), "text_len": ((batch_size,), torch.int64)}
    for name, (shape, dtype) in expected.items():
        assert tuple(batch[name].shape) == shape and batch[name].dtype == dtype, name


def test_train_dataset_and_collate_end_to_end(tmp_path, tokenizer):
    dataset = CaptionDataset(write_tiny_dataset(tmp_path / "datasets"), TINY, is_train=True, tokenizer=tokenizer)
    assert len(dataset) == 3
    dataset.set_seed(0)
    batch = collate([dataset[i] for i in range(3)])
    check_train_batch(batch, TINY, 3)
    assert set(batch) == {"video_keys", "frames", "audio", "input_ids", "target_ids", "masked_pos", "text_len"}
    for row, key in enumerate(batch["video_keys"]):
        targets, text_len = encode_caption(CAPTIONS[key], tokenizer, TINY.max_seq_length)
        assert np.array_equal(batch["target_ids"][row].numpy(), targets) and batch["text_len"][row] == text_len
        # The frames are this video's colour (found by key although frame rows are in another order).
        colour = batch["frames"][row].float().mean(dim=(0, 2, 3))
        assert torch.allclose(colour, torch.tensor(COLOURS[key], dtype=torch.float32), atol=4)
        # The audio is this video's tone (row i of the HDF5 = row i of the captions).
        wave = batch["audio"][row, 0, :int(0.25 * 32000)].numpy()
        assert abs(dominant_frequency(wave, 32000) - FREQS[key]) < 20


def test_eval_dataset_items(tmp_path):
    dataset = CaptionDataset(write_tiny_dataset(tmp_path / "datasets", with_linelist=False), TINY, is_train=False)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert set(batch) == {"video_keys", "frames", "audio", "captions"}
    assert batch["captions"] == [CAPTIONS[k] for k in batch["video_keys"]]
    assert batch["frames"].shape == (3, TINY.num_frames, 3, TINY.image_size, TINY.image_size)
    again = collate([dataset[i] for i in range(len(dataset))])
    assert torch.equal(batch["frames"], again["frames"]) and torch.equal(batch["audio"], again["audio"])


def test_train_audio_is_augmented(tmp_path, tokenizer):
    yaml_path = write_tiny_dataset(tmp_path / "datasets")
    evaluation = CaptionDataset(yaml_path, TINY, is_train=False)
    augmented = CaptionDataset(yaml_path, TINY, is_train=True, tokenizer=tokenizer)
    augmented.set_seed(0)
    assert not all(torch.equal(augmented[i]["audio"], evaluation[i]["audio"]) for i in range(3))


def test_misaligned_audio_names_both_files(tmp_path, tokenizer):
    keys = list(COLOURS)
    yaml_path = write_tiny_dataset(tmp_path / "datasets", audio_order=[keys[1], keys[0], keys[2]])
    with pytest.raises(ValueError, match=r"train_mp3\.hdf row 0 is audio 'v1'.*train\.caption\.tsv is 'train/v0"):
        CaptionDataset(yaml_path, TINY, is_train=True, tokenizer=tokenizer)


def test_missing_frame_row_is_reported(tmp_path, tokenizer):
    root = tmp_path / "datasets"
    yaml_path = write_tiny_dataset(root)
    write_tsv(root / "frame_tsv" / "train_32frames.img.tsv", [["train/v0.mp4", "{}", jpeg_b64(textured_frame(40, 40))]])
    with pytest.raises(ValueError, match=r"train_32frames\.img\.tsv: 2 key\(s\)"):
        CaptionDataset(yaml_path, TINY, is_train=True, tokenizer=tokenizer)


def test_data_config_round_trip_and_unknown_field():
    assert DataConfig.from_dict(TINY.to_dict()) == TINY
    assert DataConfig().clip_samples == 320000
    with pytest.raises(ValueError, match="unknown keys"):
        DataConfig.from_dict({"num_frame": 3})


def test_loader_with_workers_is_seeded_and_reproducible(tmp_path, tokenizer):
    dataset = CaptionDataset(write_tiny_dataset(tmp_path / "datasets"), TINY, is_train=True, tokenizer=tokenizer)

    def first_batches(seed, workers, shuffle=True):
        if workers == 0:
            dataset.set_seed(seed)  # no worker process, so seed_worker does not run
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, shuffle=shuffle, collate_fn=collate,
                            worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed))
        return [batch for batch in loader]

    run_a, run_b = first_batches(7, 2), first_batches(7, 2)
    for a, b in zip(run_a, run_b):
        check_train_batch(a, TINY, len(a["video_keys"]))
        assert a["video_keys"] == b["video_keys"]
        assert all(torch.equal(a[k], b[k]) for k in ("frames", "audio", "input_ids", "masked_pos"))
    # Same order, another seed: the augmentation streams must change (upstream seeded workers by worker id, so
    # they did not).
    fixed_a, fixed_c = first_batches(7, 2, shuffle=False), first_batches(8, 2, shuffle=False)
    assert [a["video_keys"] for a in fixed_a] == [c["video_keys"] for c in fixed_c]
    assert any(not torch.equal(a["masked_pos"], c["masked_pos"]) or not torch.equal(a["audio"], c["audio"])
               for a, c in zip(fixed_a, fixed_c))
    serial_a, serial_b = first_batches(7, 0), first_batches(7, 0)
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(serial_a, serial_b))


def test_eval_without_captions_follows_the_frame_tsv(tmp_path):
    keys = list(COLOURS)
    # Without a caption TSV the frame TSV (written in reverse order) sets the order the audio must follow.
    yaml_path = write_tiny_dataset(tmp_path / "datasets", audio_order=list(reversed(keys)), with_linelist=False)
    yaml_path.write_text("".join(line + "\n" for line in yaml_path.read_text().splitlines()
                                 if not line.startswith(("caption:", "label:"))))
    dataset = CaptionDataset(yaml_path, TINY, is_train=False)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["video_keys"] == list(reversed(keys)) and "captions" not in batch
    for row, key in enumerate(batch["video_keys"]):
        wave = batch["audio"][row, 0, :int(0.25 * 32000)].numpy()
        assert abs(dominant_frequency(wave, 32000) - FREQS[key]) < 20
    with pytest.raises(ValueError, match="no 'caption' entry"):
        CaptionDataset(yaml_path, TINY, is_train=True)


def test_named_caption_file_that_is_missing_is_an_error(tmp_path):
    yaml_path = write_tiny_dataset(tmp_path / "datasets")
    (tmp_path / "datasets" / "metadata" / "train.caption.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"'caption: train\.caption\.tsv' not found"):
        CaptionDataset(yaml_path, TINY, is_train=False)


def test_data_folder_is_never_written_even_without_caption_indexes(tmp_path, tokenizer):
    root = tmp_path / "datasets"
    yaml_path = write_tiny_dataset(root)
    for name in ("train.caption", "train.caption.linelist"):  # as the FAVDBench release ships them
        (root / "metadata" / f"{name}.lineidx").unlink()
        (root / "metadata" / f"{name}.lineidx.8b").unlink()
    folders = [root, *(path for path in root.rglob("*") if path.is_dir())]
    listing = sorted((str(path), path.stat().st_mtime_ns) for path in root.rglob("*"))

    def read_everything():
        train = CaptionDataset(yaml_path, TINY, is_train=True, tokenizer=tokenizer)
        train.set_seed(0)
        collate([train[i] for i in range(len(train))])
        evaluation = CaptionDataset(yaml_path, TINY, is_train=False)
        assert [evaluation[i]["caption"] for i in range(3)] == [CAPTIONS[k] for k in evaluation.keys]

    read_everything()  # a writable folder: nothing may appear in it either
    assert sorted((str(path), path.stat().st_mtime_ns) for path in root.rglob("*")) == listing
    for folder in folders:
        folder.chmod(0o555)
    try:
        read_everything()
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert sorted((str(path), path.stat().st_mtime_ns) for path in root.rglob("*")) == listing


def test_bad_caption_row_names_the_file_and_line(tmp_path):
    yaml_path = write_tiny_dataset(tmp_path / "datasets", with_linelist=False)
    captions = tmp_path / "datasets" / "metadata" / "train.caption.tsv"
    lines = captions.read_text(encoding="utf-8").split("\n")
    lines[1] = "train/v1.mp4\t[{caption: unquoted}]"
    captions.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.caption\.tsv: line 2: caption column is not JSON"):
        CaptionDataset(yaml_path, TINY, is_train=False)


def test_dataset_exposes_the_recipe_and_refuses_a_contradicting_config(tmp_path, tokenizer):
    yaml_path = write_tiny_dataset(tmp_path / "datasets")
    assert CaptionDataset(yaml_path, TINY, is_train=False).recipe == PreprocessRecipe.paper()
    for config, problem in ((DataConfig(**{**TINY.to_dict(), "sample_rate": 16000}), r"16000 Hz .* 32000 Hz"),
                            (DataConfig(**{**TINY.to_dict(), "clip_seconds": 12.0}), r"12 s .* 10 s clips")):
        with pytest.raises(ValueError, match=r"train_32frames\.yaml: the data config .*" + problem) as error:
            CaptionDataset(yaml_path, config, is_train=True, tokenizer=tokenizer)
        assert "\n" not in str(error.value)
    recipe = PreprocessRecipe(stored_frames=8, short_side=64, clip_seconds=0.25)
    recipe.save(recipe_path_for_yaml(yaml_path))
    dataset = CaptionDataset(yaml_path, TINY, is_train=False)
    assert dataset.recipe == recipe and dataset[0]["audio"].shape == (1, TINY.clip_samples)
    with pytest.raises(ValueError, match=r"0\.5 s .* 0\.25 s clips \(train_32frames\.preprocessor_config\.json\)"):
        CaptionDataset(yaml_path, DataConfig(**{**TINY.to_dict(), "clip_seconds": 0.5}), is_train=False)
