"""No process outlives `avlformer prepare`: pools are shut down when their work is done, and workers exit when
prepare's main process is killed. Processes are read from /proc (Linux). And a worker starts cheaply: what it
imports leaves PyTorch out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media_fixtures as mf
from avlformer.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()     # fields after "pid (comm)": state, ppid, ...


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of the live children of ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[1] == str(pid) and fields[0] != "Z":
            found.add((int(entry), fields[19]))
    return found


def alive(processes: set[tuple[int, str]], wait: float) -> set[tuple[int, str]]:
    """Those of ``processes`` still running after up to ``wait`` seconds (a zombie counts as gone)."""
    deadline = time.monotonic() + wait
    while True:
        left = {(pid, start) for pid, start in processes
                if (fields := _stat(pid)) and fields[0] != "Z" and fields[19] == start}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def dataset(root: Path, count: int) -> Path:
    clips = [f"k{i}" for i in range(count)]
    for clip in clips:
        mf.write_normal(root / "videos" / "train" / f"{clip}.mp4", seconds=0.5, fps=20)
    (root / "captions.json").write_text(json.dumps({clip: f"clip {clip}." for clip in clips}))
    return root


def spawn_prepare(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "avlformer.cli", "prepare", "--data-dir", str(root),
                             "--image-size", "32", "--num-frames", "4", "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_pool_workers_are_gone_when_prepare_dataset_returns(tmp_path):
    before = children(os.getpid())
    result = prepare_dataset(dataset(tmp_path, 4), num_frames=4, short_side=32, workers=2, progress=False)
    assert result.prepared == {"train": 4}
    # The resource tracker is one per Python process and lives as long as it: not a pool worker.
    workers = {(pid, start) for pid, start in children(os.getpid()) - before
               if b"resource_tracker" not in _cmdline(pid)}
    assert not alive(workers, wait=0)


def test_no_child_of_prepare_survives_a_kill_of_its_main_process(tmp_path):
    root = dataset(tmp_path, 12)   # enough clips that the kill lands mid-run
    process = spawn_prepare(root)
    seen: set[tuple[int, str]] = set()
    work = root / ".prepare_work" / "train-4f-32px"
    while process.poll() is None:
        seen |= children(process.pid)
        if len(seen) >= 2 and any(work.glob("*.json")):
            process.send_signal(signal.SIGKILL)   # only the main process, as `kill -9 PID` does
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    assert not alive(seen, wait=10), "children of prepare still running after it was killed"


@pytest.mark.parametrize("what", ["worker", "benchmark"])
def test_a_spawned_prepare_worker_imports_no_torch(what):
    """A spawned worker imports the clip work module, and the main module again (the prepare benchmark when it
    runs): neither may pull in PyTorch, which costs each worker about 1.5 s of CPU before its first clip
    (docs/data.md, "Worker start-up")."""
    load = {"worker": "import avlformer.data.prepare.clip_work",
            "benchmark": "import runpy; runpy.run_path('benchmarks/prepare.py', run_name='__mp_main__')"}[what]
    probe = f"import sys; {load}; print(sorted(m for m in ('torch', 'torchaudio') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
