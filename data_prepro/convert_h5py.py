"""Upstream-compatible: pack ``datasets/audio_mp3/<split>/*.mp3`` (sorted, raw bytes) into
``datasets/audio_hdf/<split>_mp3.hdf``. Run from the repository root: ``python data_prepro/convert_h5py.py train``.

Unlike upstream's script (which wrote ``datasets/audio_hdf<split>_mp3.hdf``), the file lands where the loader and
the released tarball expect it. A thin wrapper over ``avlformer.data.prepare.pack_mp3_folder``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # usable without `pip install`

from avlformer.data.prepare import pack_mp3_folder  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python data_prepro/convert_h5py.py SPLIT", file=sys.stderr)
        return 2
    split = argv[0]
    out_path = Path("datasets") / "audio_hdf" / f"{split}_mp3.hdf"
    try:
        count = pack_mp3_folder(Path("datasets") / "audio_mp3" / split, out_path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{out_path}: {count} mp3 file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
