"""The original's convert_h5py entry point: pack ``datasets/audio_mp3/<split>/*.mp3`` (sorted by file name, raw
bytes) into ``datasets/audio_hdf/<split>_mp3.hdf``. Run from the repository root:
``python data_prepro/convert_h5py.py train``.

Unlike the original script (which wrote ``datasets/audio_hdf<split>_mp3.hdf``, docs/upstream.md §1.4), the file
lands where the loader and the released tarball expect it, and every file is decoded first: one that is not an
mp3 (empty, text, a folder, a broken link or link loop) is named and left out, and the exit status is then 1.
``avlformer prepare`` does this step itself.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # usable without `pip install`

from avlformer.data.audio_hdf import write_audio_hdf  # noqa: E402
from avlformer.data.file_problems import environment_message, is_environment_error  # noqa: E402
from avlformer.data.media_audio import mp3_file_problem  # noqa: E402
from avlformer.data.prepare.layout import split_name_problem  # noqa: E402


def _output_problem(out_path: Path) -> str | None:
    for folder in reversed(out_path.parents):
        if folder.exists() and not folder.is_dir():
            return f"{folder}: is a file, so {out_path} cannot be written; move it away"
    if out_path.is_dir():
        return f"{out_path}: is a folder; move it away"
    return None


def _pack(split: str) -> int:
    folder = Path("datasets") / "audio_mp3" / split
    out_path = Path("datasets") / "audio_hdf" / f"{split}_mp3.hdf"
    if not folder.is_dir():
        print(f"error: {folder}: no such folder", file=sys.stderr)
        return 2
    if problem := _output_problem(out_path):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    paths, skipped = [], 0
    for path in sorted(folder.glob("*.mp3")):
        if problem := mp3_file_problem(path):
            print(f"skipped {path}: {problem}", file=sys.stderr)
            skipped += 1
        else:
            paths.append(path)
    if not paths:
        print(f"error: {folder}: no usable .mp3 files", file=sys.stderr)
        return 1
    write_audio_hdf(out_path, [path.stem for path in paths], (path.read_bytes() for path in paths))
    print(f"{out_path}: {len(paths)} mp3 file(s)" + (f", {skipped} skipped (named above)" if skipped else ""))
    return 1 if skipped else 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python data_prepro/convert_h5py.py SPLIT", file=sys.stderr)
        return 2
    if problem := split_name_problem(argv[0]):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return _pack(argv[0])
    except OSError as error:
        if not is_environment_error(error):
            raise
        print(f"error: {environment_message(error, Path('datasets'))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
