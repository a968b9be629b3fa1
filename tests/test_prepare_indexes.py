"""What a fresh `avlformer prepare` folder holds for its readers: every TSV readable by the original's rule (only
through an existing ``.lineidx``; docs/upstream.md §1.3), the preprocessing recipe beside each yaml, and a data
folder that reading leaves untouched."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import media_fixtures as mf
from avlformer.data.prepare import prepare_dataset
from avlformer.data.recipe import PreprocessRecipe, recipe_for_yaml, recipe_path_for_yaml


class OriginalTSVRule:
    """A re-expression of the original's TSVFile: the offsets come from ``<name>.lineidx`` only; a missing index
    is a FileNotFoundError (it never builds one); a row is one line split on tabs, each field stripped."""

    def __init__(self, path: Path):
        self.path = path
        index = Path(os.path.splitext(path)[0] + ".lineidx")
        if not index.is_file():
            raise FileNotFoundError(index)
        self.offsets = [int(line.strip()) for line in index.read_text().splitlines()]

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, index: int) -> list[str]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offsets[index])
            return [field.strip() for field in handle.readline().decode("utf-8").split("\t")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    for split, clips in (("train", ("a", "b")), ("val", ("v",))):
        for clip in clips:
            mf.write_normal(root / "videos" / split / f"{clip}.mp4", seconds=0.5, fps=20)
    (root / "captions.json").write_text(json.dumps({"a": "one.", "b": "two.", "v": "three."}))
    result = prepare_dataset(root, num_frames=4, short_side=48, workers=1, progress=False)
    assert result.prepared == {"train": 2, "val": 1} and not result.errors
    return root


def test_the_original_reader_rule_reads_every_tsv_prepare_writes(prepared):
    tsvs = sorted(path for folder in ("frame_tsv", "metadata") for path in (prepared / folder).glob("*.tsv"))
    names = {str(path.relative_to(prepared)) for path in tsvs}
    assert {"frame_tsv/train_4frames.img.tsv", "metadata/train.caption.tsv", "metadata/train.label.tsv",
            "metadata/train.caption.linelist.tsv", "metadata/train.img.tsv"} <= names
    for path in tsvs:
        lines = path.read_bytes().decode("utf-8").split("\n")[:-1]
        reader = OriginalTSVRule(path)
        assert len(reader) == len(lines), path
        assert [reader.row(i) for i in range(len(reader))] == [[f.strip() for f in line.split("\t")]
                                                                for line in lines], path
        eight = Path(os.path.splitext(path)[0] + ".lineidx.8b")
        assert np.fromfile(eight, dtype="<u8").tolist() == reader.offsets, eight


def test_the_rule_refuses_a_tsv_without_its_index(prepared, tmp_path):
    bare = tmp_path / "x.caption.tsv"
    bare.write_bytes((prepared / "metadata" / "train.caption.tsv").read_bytes())
    with pytest.raises(FileNotFoundError):
        OriginalTSVRule(bare)


def test_recipe_is_written_beside_each_prepared_yaml(prepared):
    for split in ("train", "val"):
        yaml_path = prepared / "metadata" / f"{split}_4frames.yaml"
        assert recipe_path_for_yaml(yaml_path).is_file()
        assert recipe_for_yaml(yaml_path) == PreprocessRecipe(stored_frames=4, short_side=48)
    assert json.loads((prepared / "prepare_report.json").read_text())["recipe"]["short_side"] == 48


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_reading_the_prepared_folder_writes_nothing_into_it(prepared):
    from avlformer.data.dataset import CaptionDataset, DataConfig

    before = snapshot(prepared)
    folders = [prepared] + [path for path in prepared.rglob("*") if path.is_dir()]
    for folder in folders:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        dataset = CaptionDataset(prepared / "metadata" / "train_4frames.yaml",
                                 DataConfig(num_frames=4, image_size=32), is_train=False)
        assert len(dataset) == 2
        item = dataset[1]
        assert tuple(item["frames"].shape) == (4, 3, 32, 32) and item["caption"] == "two."
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert snapshot(prepared) == before
