"""Frame-TSV container: upstream byte format, index files, atomic writes, reader errors, fork safety."""

from __future__ import annotations

import multiprocessing
import os
import struct

import pytest
from media_fixtures import write_tsv

from avlformer.data.tsv import TSVFile, TSVWriter, lineidx_8b_path, lineidx_path

ROWS = [
    ["train/a.mp4", '{"class": -1, "width": 341, "height": 256}', "QUJD", "REVG"],
    ["train/bb.mp4", "x" * 700, "ünïcödé"],
    ["train/c.mp4", ""],
]


def _row_starts(data: bytes) -> list[int]:
    starts, position = [], 0
    for line in data.splitlines(keepends=True):
        starts.append(position)
        position += len(line)
    return starts


def test_index_names_follow_upstream_rule(tmp_path):
    tsv = tmp_path / "train_32frames.img.tsv"
    assert lineidx_path(tsv).name == "train_32frames.img.lineidx"
    assert lineidx_8b_path(tsv).name == "train_32frames.img.lineidx.8b"


def test_written_bytes_and_both_indexes_match_row_offsets(tmp_path):
    tsv = tmp_path / "train_32frames.img.tsv"
    assert write_tsv(tsv, ROWS) == len(ROWS)
    data = tsv.read_bytes()
    expected = "".join("\t".join(row) + "\n" for row in ROWS).encode("utf-8")
    assert data == expected
    starts = _row_starts(data)
    assert (tmp_path / "train_32frames.img.lineidx").read_bytes() == "".join(f"{s}\n" for s in starts).encode()
    raw = (tmp_path / "train_32frames.img.lineidx.8b").read_bytes()
    assert raw == b"".join(struct.pack("<Q", s) for s in starts)
    for start, row in zip(starts, ROWS):
        assert data[start:].split(b"\n", 1)[0].decode("utf-8").split("\t") == row


def test_bytes_fields_are_written_verbatim(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, [["k", b"AAAA", "b"]])
    assert tsv.read_bytes() == b"k\tAAAA\tb\n"


def test_reader_round_trip_rows_and_keys(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, ROWS)
    table = TSVFile(tsv)
    assert len(table) == len(ROWS)
    assert [table.row(i) for i in range(len(ROWS))] == ROWS
    assert table.keys() == [row[0] for row in ROWS]
    assert table.row(-1) == ROWS[-1]
    with pytest.raises(IndexError, match="out of range"):
        table.row(len(ROWS))


def test_key_longer_than_probe_is_read_whole(tmp_path):
    tsv = tmp_path / "x.tsv"
    long_key = "k" * 2000
    write_tsv(tsv, [[long_key, "v"], ["short"]])
    assert TSVFile(tsv).keys() == [long_key, "short"]


def test_reader_falls_back_to_text_index_then_builds_one_in_memory(tmp_path):
    tsv = tmp_path / "x.img.tsv"
    write_tsv(tsv, ROWS)
    lineidx_8b_path(tsv).unlink()
    assert TSVFile(tsv).row(1) == ROWS[1]
    text_index = lineidx_path(tsv).read_bytes()
    lineidx_path(tsv).unlink()
    table = TSVFile(tsv)
    assert table.row(2) == ROWS[2]
    assert [int(line) for line in text_index.split()] == table.offsets.tolist()
    # A reader never writes into the data folder: the index it had to build stays in memory.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x.img.tsv"]


def test_missing_index_in_a_read_only_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    tsv = folder / "x.tsv"
    write_tsv(tsv, ROWS)
    lineidx_path(tsv).unlink()
    lineidx_8b_path(tsv).unlink()
    folder.chmod(0o555)
    try:
        table = TSVFile(tsv)
        assert [table.row(i) for i in range(len(ROWS))] == ROWS
        assert [path.name for path in folder.iterdir()] == ["x.tsv"]
    finally:
        folder.chmod(0o755)


def test_reader_prefers_the_8b_index(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, ROWS)
    lineidx_path(tsv).write_text("garbage\n")
    assert TSVFile(tsv).row(1) == ROWS[1]


def test_stale_index_is_reported_with_file_names(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, ROWS)
    # The TSV is rewritten with a longer first row but the old index files are kept.
    stale = [list(ROWS[0]) + ["extra"]] + ROWS[1:]
    tsv.write_bytes("".join("\t".join(r) + "\n" for r in stale).encode("utf-8"))
    with pytest.raises(ValueError, match=r"x\.lineidx\.8b does not match .*x\.tsv"):
        TSVFile(tsv).row(1)


def test_index_past_end_of_file_is_reported(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, ROWS)
    tsv.write_bytes(b"only\n")
    with pytest.raises(ValueError, match="points past the end"):
        len(TSVFile(tsv))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        TSVFile(tmp_path / "nope.tsv")


def test_field_with_tab_or_newline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tab or newline"):
        write_tsv(tmp_path / "x.tsv", [["k", "a\tb"]])
    assert not list(tmp_path.iterdir())


def test_interrupted_writer_leaves_no_final_named_file(tmp_path):
    tsv = tmp_path / "x.img.tsv"
    with pytest.raises(KeyboardInterrupt):
        with TSVWriter(tsv) as writer:
            writer.write(["a", "b"])
            # Mid-write nothing exists under a final name.
            assert not tsv.exists() and not lineidx_path(tsv).exists() and not lineidx_8b_path(tsv).exists()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rewrite_keeps_the_previous_complete_file(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, ROWS)
    before = tsv.read_bytes()
    with pytest.raises(RuntimeError):
        with TSVWriter(tsv) as writer:
            writer.write(["new"])
            raise RuntimeError("boom")
    assert tsv.read_bytes() == before
    assert TSVFile(tsv).row(0) == ROWS[0]


def test_write_outside_with_block_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="outside"):
        TSVWriter(tmp_path / "x.tsv").write(["a"])


def _read_in_child(table, queue):
    queue.put((table.row(2), os.getpid()))


def test_reader_reopens_after_fork(tmp_path):
    tsv = tmp_path / "x.tsv"
    write_tsv(tsv, ROWS)
    table = TSVFile(tsv)
    assert table.row(0) == ROWS[0]  # opens the handle in the parent
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(table, queue))
    child.start()
    row, pid = queue.get(timeout=30)
    child.join(timeout=30)
    assert row == ROWS[2] and pid != os.getpid()
    # The parent's handle (and its file position) is unaffected.
    assert table.row(1) == ROWS[1]
