"""Support for the training tests: a tiny AVLFormer with all training-time randomness switched off (so runs with
different process counts can be compared) and an in-memory dataset that follows the batch contract."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from avlformer.data.masking import make_train_text
from avlformer.data.tokenizer import load_tokenizer
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig

CAPTIONS = [
    "a red square slides to the left. a low tone hums steadily.",
    "a blue circle bounces on a green floor. a high beep repeats twice.",
    "a yellow triangle spins slowly. soft noise hisses in the background.",
    "a small white star moves up. a drum beats in a fast rhythm.",
]


def deterministic_tiny_config(**overrides) -> AVLFormerConfig:
    """The tiny preset without dropout, drop path, SpecAugment, mel jitter or patchout, and a short text."""
    tree = AVLFormerConfig.tiny().to_dict()
    tree["text"].update(hidden_dropout=0.0, attention_dropout=0.0)
    tree["video"].update(drop_path_rate=0.0)
    tree["audio"].update(freqm=0, timem=0, fmin_aug_range=1, fmax_aug_range=1, s_patchout_t=0, s_patchout_f=0)
    tree.update(max_seq_length=24, max_gen_length=8)
    tree.update(overrides)
    return AVLFormerConfig.from_dict(tree)


def tiny_model(config: AVLFormerConfig | None = None, seed: int = 0) -> AVLFormer:
    torch.manual_seed(seed)
    return AVLFormer(config or deterministic_tiny_config())


class FakeCaptionDataset(Dataset):
    """Fixed random frames/audio per index; MLM masking drawn from the generator ``set_seed`` installs."""

    def __init__(self, config: AVLFormerConfig, size: int = 16, is_train: bool = True, nan_index: int | None = None,
                 same_caption: bool = False, tokenizer=None):
        self.config, self.size, self.is_train = config, size, is_train
        self.same_caption = same_caption  # equal lengths make per-batch token means batch-size independent
        self.tokenizer = tokenizer or load_tokenizer()
        self.nan_index = nan_index
        self.rng = np.random.default_rng(0)

    def set_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        cfg = self.config
        gen = torch.Generator().manual_seed(1000 + index)
        frames = torch.randn(cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=gen)
        audio = 0.1 * torch.randn(1, cfg.audio.clip_samples, generator=gen)
        if index == self.nan_index:
            frames = frames * float("nan")
        item = {"video_key": f"val/{index}.mp4", "frames": frames, "audio": audio}
        caption = CAPTIONS[0 if self.same_caption else index % len(CAPTIONS)]
        if not self.is_train:
            item["caption"] = caption
            return item
        text = make_train_text(caption, self.tokenizer, self.rng, max_seq_length=cfg.max_seq_length,
                               mask_prob=0.25, max_masked_tokens=8)
        item.update(input_ids=text.input_ids, target_ids=text.target_ids, masked_pos=text.masked_pos,
                    text_len=text.text_len)
        return item


class ReferencedDataset(FakeCaptionDataset):
    """The fake training set with the ``keys`` / ``captions`` a CaptionDataset has (self-critical references)."""

    @property
    def keys(self):
        return [f"val/{i}.mp4" for i in range(self.size)]

    @property
    def captions(self):
        return [[CAPTIONS[0 if self.same_caption else i % len(CAPTIONS)]] for i in range(self.size)]


def distributed_worker(rank: int, world_size: int, port: int, flags: list[str], val_size: int = 0) -> None:
    """One process of a gloo run, as torchrun would start it (environment variables), for torch.multiprocessing."""
    import os

    from avlformer.training.args import parse_train_args
    from avlformer.training.distributed import init_distributed, teardown_distributed
    from avlformer.training.loop import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = deterministic_tiny_config()
    args = parse_train_args(flags, world_size=world_size, model_config=config)
    env = init_distributed("cpu")
    try:
        train(args, env, model=tiny_model(config),
              train_dataset=FakeCaptionDataset(config, 8, same_caption=True),
              val_dataset=FakeCaptionDataset(config, val_size, is_train=False) if val_size else None)
    finally:
        teardown_distributed()
