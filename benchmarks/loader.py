"""Training-loader throughput: our CaptionDataset vs an upstream-style loader, at paper sizes.

Both read the same generated dataset (upstream layout: frame TSV with 32 base64 JPEGs per row at 256 px short
side, HDF5 of 10 s mono 32 kHz mp3s, caption TSV) and produce a training batch of 32x224x224 frames, 10 s audio
and a 300-token masked caption. The baseline re-expresses upstream's per-sample work (docs/upstream.md §2.2-§2.6):
per-frame base64 + JPEG decode, one PIL image per frame for resize and crop, per-frame ToTensor-style conversion
and normalisation, and a dense 1557x1557 int64 attention mask built for every sample. Ours decodes into one clip
buffer and transforms the clip as a single tensor, and leaves the attention mask to the model.

Prints one JSON object as the last stdout line: samples/s per worker count for both, and the speedups.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from avlformer.data.audio_hdf import HDF5AudioReader, write_audio_hdf
from avlformer.data.clip_ids import clip_id_from_key
from avlformer.data.dataset import CaptionDataset, DataConfig, collate, resolve_paths, seed_worker
from avlformer.data.media import encode_mp3
from avlformer.data.token_ids import PAD_ID
from avlformer.data.tokenizer import load_tokenizer
from avlformer.data.tsv import TSVFile, TSVWriter

CAPTION = ("In a bright kitchen a young woman in a blue apron chops green onions on a wooden board while a pot of "
           "water boils on the stove behind her. She talks to the camera in a calm voice, explaining each step, and "
           "the knife taps rhythmically against the board. A kettle whistles briefly in the background and a dog "
           "barks twice outside the window before she tips the onions into the pot and stirs.")
NUM_FRAMES, FRAME_H, FRAME_W = 32, 256, 341


# ------------------------------------------------------------------------------------------- dataset
def _clip_pattern(rng: np.random.Generator, clip: int) -> np.ndarray:
    # Smooth gradients plus mild noise: JPEG sizes close to real video frames (tens of kB at quality 95).
    y, x = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    shift = 40.0 * clip
    image = np.stack([128 + 100 * np.sin((x + shift) / 37.0), 128 + 100 * np.cos((y - shift) / 23.0),
                      128 + 80 * np.sin((x + y + shift) / 51.0)], axis=-1)
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _frame(pattern: np.ndarray, index: int) -> np.ndarray:
    return np.roll(pattern, 3 * index, axis=1)  # the scene pans: every frame differs


def _jpeg_b64(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    return base64.b64encode(buffer.getvalue())


def write_dataset(root: Path, num_clips: int, seconds: float = 10.0) -> Path:
    rng = np.random.default_rng(0)
    keys = [f"train/clip{i:03d}.mp4" for i in range(num_clips)]
    with TSVWriter(root / "frame_tsv" / "train_32frames.img.tsv") as writer:
        for clip, key in enumerate(keys):
            pattern = _clip_pattern(rng, clip)
            header = json.dumps({"class": -1, "width": FRAME_W, "height": FRAME_H})
            writer.write([key, header] + [_jpeg_b64(_frame(pattern, i)) for i in range(NUM_FRAMES)])
    t = np.arange(int(seconds * 32000)) / 32000
    waves = (0.2 * np.sin(2 * np.pi * (200 + 20 * row) * t) + 0.02 * rng.normal(size=t.shape)
             for row in range(num_clips))
    write_audio_hdf(root / "audio_hdf" / "train_mp3.hdf", [clip_id_from_key(k) for k in keys],
                    (encode_mp3(wave.astype(np.float32), 32000) for wave in waves))
    meta = root / "metadata"
    with TSVWriter(meta / "train.caption.tsv") as writer:
        for key in keys:
            writer.write([key, json.dumps([{"caption": CAPTION}])])
    (meta / "train_32frames.yaml").write_text("caption: train.caption.tsv\nimg: frame_tsv/train_32frames.img.tsv\n"
                                              "audio: audio_hdf/train_mp3.hdf\n")
    return meta / "train_32frames.yaml"


# ------------------------------------------------------------------------------------------- baseline
class UpstreamStyleDataset(Dataset):
    """Upstream's per-sample work re-expressed (see the module docstring); returns upstream's tuple layout."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, yaml_path: Path, image_size: int = 224, max_seq_length: int = 300, visual_tokens: int = 1257):
        paths = resolve_paths(yaml_path)
        self.frames, self.audio = TSVFile(paths.frames), HDF5AudioReader(paths.audio)
        captions = TSVFile(paths.captions)
        self.keys = [captions.row(i)[0] for i in range(len(captions))]
        self.captions = [json.loads(captions.row(i)[1])[0]["caption"] for i in range(len(captions))]
        self.key_to_frame_row = {self.frames.key(i): i for i in range(len(self.frames))}
        self.tokenizer = load_tokenizer()
        self.image_size, self.max_len, self.visual_tokens = image_size, max_seq_length, visual_tokens

    def __len__(self) -> int:
        return len(self.keys)

    def _frames(self, row: int) -> torch.Tensor:
        fields = self.frames.row(self.key_to_frame_row[self.keys[row]])[2:]
        step = (len(fields) - 1) / (NUM_FRAMES - 1)
        decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(fields[round(k * step)]))).convert("RGB"))
                   for k in range(NUM_FRAMES)]
        images = [Image.fromarray(frame) for frame in np.stack(decoded)]
        width, height = images[0].size
        size = self.image_size
        new = (int(size * width / height), size) if width >= height else (size, int(size * height / width))
        images = [image.resize(new, Image.BILINEAR) for image in images]
        left, top = random.randint(0, new[0] - size), random.randint(0, new[1] - size)
        images = [image.crop((left, top, left + size, top + size)) for image in images]
        clip = np.zeros((3, len(images), size, size), dtype=np.float32)  # ClipToTensor: (C, T, H, W)
        for index, image in enumerate(images):
            clip[:, index] = np.array(image).transpose(2, 0, 1)
        tensor = torch.from_numpy(clip).div(255.0)
        for channel, (mean, std) in enumerate(zip(self.MEAN, self.STD)):
            tensor[channel].sub_(mean).div_(std)
        return tensor.permute(1, 0, 2, 3)

    def _audio(self, row: int) -> torch.Tensor:
        import av
        container = av.open(io.BytesIO(self.audio.mp3(row).tobytes()))
        stream = container.streams.audio[0]
        wave = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
        container.close()
        gain = torch.randint(14, (1,)).item() - 7
        wave = torch.from_numpy(wave) * (10 ** (gain / 20))
        length = 320000
        wave = wave[:length] if len(wave) >= length else torch.cat([wave, torch.zeros(length - len(wave))])
        return torch.roll(wave.reshape(1, -1), np.random.randint(-50, 50), dims=-1)

    def _text(self, row: int):
        tokens = ["[CLS]"] + self.tokenizer.tokenize(self.captions[row])[: self.max_len - 2] + ["[SEP]"]
        seq_len = len(tokens)
        count = min(max(round(0.25 * seq_len), 1), 75)
        original_ids = self.tokenizer.convert_tokens_to_ids(tokens)
        candidates = list(range(1, seq_len))
        random.shuffle(candidates)
        positions = sorted(candidates[:count])
        for position in positions:
            if random.random() <= 0.8:
                tokens[position] = "[MASK]"
            elif random.random() <= 0.5:
                tokens[position] = self.tokenizer.convert_ids_to_tokens(random.randint(0, 30521))
        ids = self.tokenizer.convert_tokens_to_ids(tokens) + [PAD_ID] * (self.max_len - seq_len)
        masked_pos = torch.zeros(self.max_len, dtype=torch.int)
        masked_pos[positions] = 1
        masked_ids = [original_ids[p] for p in positions] + [-1] * (75 - count)
        output_ids = ids[1:seq_len] + [PAD_ID] * (self.max_len - seq_len + 1)
        total = self.max_len + self.visual_tokens
        attention = torch.zeros((total, total), dtype=torch.long)
        attention[:seq_len, :seq_len].copy_(torch.tril(torch.ones((seq_len, seq_len), dtype=torch.long)))
        attention[:seq_len, self.max_len:].fill_(1)
        attention[self.max_len:, self.max_len:].fill_(1)
        return (torch.tensor(ids), attention, torch.zeros(self.max_len, dtype=torch.long), masked_pos,
                torch.tensor(masked_ids), torch.tensor(ids[:-1] + [PAD_ID]), torch.tensor(output_ids))

    def __getitem__(self, row: int):
        ids, attention, segments, masked_pos, masked_ids, input_token_ids, output_ids = self._text(row)
        example = (ids, attention, segments, self._frames(row), self._audio(row), masked_pos, masked_ids,
                   input_token_ids, output_ids)
        return self.keys[row], example, {}


def _upstream_worker_init(worker_id: int) -> None:
    random.seed(worker_id)
    np.random.seed(worker_id)
    torch.manual_seed(worker_id)


# ------------------------------------------------------------------------------------------- timing
def samples_per_second(loader: DataLoader, epochs: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and first-touch costs are excluded
    start, count = time.perf_counter(), 0
    for epoch in range(epochs):
        for batch in iterator:
            count += len(batch["video_keys"]) if isinstance(batch, dict) else len(batch[0])
        iterator = iter(loader) if epoch + 1 < epochs else iterator
    return count / (time.perf_counter() - start)


def best_of_alternating(loaders: dict[str, DataLoader], epochs: int, rounds: int) -> dict[str, float]:
    """Measure the loaders in turn, ``rounds`` times, and keep each one's best rate: on a shared machine the
    best round is the one least disturbed by other load, and alternating exposes both to the same conditions."""
    best = {name: 0.0 for name in loaders}
    for _ in range(rounds):
        for name, loader in loaders.items():
            best[name] = max(best[name], samples_per_second(loader, epochs))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round is kept")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader process for both, so the comparison measures the work done
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        yaml_path = write_dataset(Path(folder) / "datasets", args.clips)
        print(f"dataset: {args.clips} clips in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        ours_dataset = CaptionDataset(yaml_path, DataConfig(), is_train=True)
        baseline_dataset = UpstreamStyleDataset(yaml_path)
        result: dict = {"clips": args.clips, "batch_size": args.batch_size, "frames": NUM_FRAMES, "image_size": 224,
                        "audio_seconds": 10.0, "max_seq_length": 300}
        for workers in args.workers:
            ours_dataset.set_seed(0)
            ours = DataLoader(ours_dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                              collate_fn=collate, worker_init_fn=seed_worker,
                              generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
            baseline = DataLoader(baseline_dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                  worker_init_fn=_upstream_worker_init, persistent_workers=workers > 0)
            rates = best_of_alternating({"ours": ours, "baseline": baseline}, args.epochs, args.rounds)
            ours_rate, baseline_rate = rates["ours"], rates["baseline"]
            result[f"workers_{workers}"] = {"ours_samples_per_s": round(ours_rate, 2),
                                            "baseline_samples_per_s": round(baseline_rate, 2),
                                            "speedup": round(ours_rate / baseline_rate, 2)}
            print(f"workers={workers}: ours {ours_rate:.2f}/s, baseline {baseline_rate:.2f}/s", file=sys.stderr)
            del ours, baseline
    per_workers = [result[f"workers_{w}"] for w in args.workers]
    result["ours_samples_per_s"] = per_workers[0]["ours_samples_per_s"]
    result["baseline_samples_per_s"] = per_workers[0]["baseline_samples_per_s"]
    result["speedup"] = min(entry["speedup"] for entry in per_workers)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
