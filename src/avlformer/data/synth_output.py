"""The folder ``avlformer synth`` writes into, which must never lose a user's data.

A folder is written into when it is new or empty, or when it is synth's own (``synth_outputs.json``) and none of
the files about to be written changed since; ``--overwrite`` writes over anything.
"""

from __future__ import annotations

from pathlib import Path

from avlformer.data.prepare.outputs_record import OutputsRecord

RECORD_NAME = "synth_outputs.json"


class SynthError(ValueError):
    """What synth was asked cannot be done as asked: one line, no traceback."""


def claim_folder(out: Path, targets: list[Path], overwrite: bool) -> OutputsRecord:
    """Check that synth may write ``targets`` into ``out``, then mark ``out`` as synth's (before any file is
    written, so an interrupted run can be rerun). Returns the record to add the written files to."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    record = OutputsRecord(out, RECORD_NAME)
    if not overwrite:
        if not record.path.is_file():
            entries = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
            if entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise SynthError(f"{out}: holds files synth did not write ({shown}); give a new or empty folder, "
                                 f"or --overwrite to write over them")
        elif changed := [path for path in targets if record.changed(path)]:
            raise SynthError(f"{changed[0]}: changed since synth wrote it ({len(changed)} such file(s)); give "
                             f"a new or empty folder, or --overwrite to write over them")
    out.mkdir(parents=True, exist_ok=True)
    record.save()
    return record
