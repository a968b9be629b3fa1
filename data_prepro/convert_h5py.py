"""The original's convert_h5py entry point: pack ``datasets/audio_mp3/<split>/*.mp3`` (sorted by file name, raw
bytes) into ``datasets/audio_hdf/<split>_mp3.hdf``. Run from the repository root:
``python data_prepro/convert_h5py.py train``.

Unlike the original script (which wrote ``datasets/audio_hdf<split>_mp3.hdf``, docs/upstream.md §1.4), the file
lands where the loader and the released tarball expect it. ``avlformer prepare`` does this step itself.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # usable without `pip install`

from avlformer.data.audio_hdf import write_audio_hdf  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python data_prepro/convert_h5py.py SPLIT", file=sys.stderr)
        return 2
    split = argv[0]
    folder = Path("datasets") / "audio_mp3" / split
    out_path = Path("datasets") / "audio_hdf" / f"{split}_mp3.hdf"
    paths = sorted(folder.glob("*.mp3"))
    if not paths:
        print(f"error: {folder}: no .mp3 files", file=sys.stderr)
        return 1
    write_audio_hdf(out_path, [path.stem for path in paths], (path.read_bytes() for path in paths))
    print(f"{out_path}: {len(paths)} mp3 file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
