"""Where ``prepare`` reads and writes (docs/upstream.md §1.1, §1.5), and how it reports problems."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avlformer.data.recipe import PreprocessRecipe
from avlformer.folder_lock import folder_lock

ERROR, WARNING = "error", "warning"
DEFAULT_SPLITS = ("train", "val", "test")
LOCK_NAME = ".prepare.lock"


class PrepareError(Exception):
    """A mistake in what prepare was given (or a second prepare on the same folder): one line, no traceback."""


class EnvironmentFault(PrepareError):
    """The machine failed prepare (disk full, I/O error, no permission, too many open files,
    ``file_problems.is_environment_error``): the run stops with one line, and no clip is judged by it."""


def prepare_lock(data_dir: Path):
    """One prepare per data folder at a time: ``DIR/.prepare.lock``, held for the whole run (a crashed run never
    blocks the next one)."""
    return folder_lock(Path(data_dir) / LOCK_NAME, f"another prepare is running on {data_dir}; wait for it to "
                       f"finish", PrepareError)


def split_name_problem(split: str) -> str | None:
    """Why ``split`` cannot name a split, or None: it is a folder name under videos/ and part of every output
    file name, so it must be a plain name (``../videos/train`` would write outside the data folder)."""
    if not split or split.startswith(".") or "/" in split or "\\" in split \
            or not split.isprintable() or split != split.strip():
        return f"{split!r} is not a split name: give a plain folder name under videos/, like train or val"
    return None


@dataclass
class Problem:
    severity: str      # "error": the clip (or caption) is left out; "warning": kept, but worth a look
    file: str          # relative to the data dir
    reason: str
    split: str = ""
    id: str = ""


@dataclass
class Layout:
    """Every path ``prepare`` reads or writes, for one data dir, one split and one frame count."""

    data_dir: Path
    split: str
    num_frames: int = 32
    short_side: int = 256

    def recipe(self) -> PreprocessRecipe:
        return PreprocessRecipe(stored_frames=self.num_frames, short_side=self.short_side)

    @property
    def videos(self) -> Path:
        return self.data_dir / "videos" / self.split

    @property
    def mp3s(self) -> Path:
        return self.data_dir / "audio_mp3" / self.split

    @property
    def frame_tsv(self) -> Path:
        return self.data_dir / "frame_tsv" / f"{self.split}_{self.num_frames}frames.img.tsv"

    @property
    def audio_hdf(self) -> Path:
        return self.data_dir / "audio_hdf" / f"{self.split}_mp3.hdf"

    @property
    def yaml(self) -> Path:
        return self.data_dir / "metadata" / f"{self.split}_{self.num_frames}frames.yaml"

    def meta(self, suffix: str) -> Path:
        return self.data_dir / "metadata" / f"{self.split}.{suffix}"

    @property
    def work(self) -> Path:
        return self.data_dir / ".prepare_work" / f"{self.split}-{self.num_frames}f-{self.short_side}px"

    def rel(self, path: str | Path) -> str:
        path = Path(path)
        return str(path.relative_to(self.data_dir) if path.is_relative_to(self.data_dir) else path)
