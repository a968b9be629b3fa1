"""Benchmark records and benchmarks/RESULTS.md, which is written from them and from nothing else.

A record is one JSON line in ``benchmarks/results/<name>.jsonl``: when and where a benchmark ran (UTC date, host,
CPU count, load average before and after, git commit, the command) and the JSON object it printed as its last
line. ``side_by_side.jsonl`` holds the runs of the original FAVDBench code next to ours on one machine and day;
benchmarks that compare with the original quote those records (``side_by_side``) rather than divide today's
times by a figure from another day.

    python benchmarks/report.py record NAME -- python benchmarks/NAME.py [ARGS]   # run, pass output through, append
    python benchmarks/report.py write                                             # RESULTS.md from every record

``make bench`` records every benchmark, then writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
SIDE_BY_SIDE = "side_by_side"
ARCHIVE = "archive"   # measurements written into the docs before runs were recorded, moved here verbatim
RUNS_SHOWN = 5        # the newest runs of each benchmark in the history table
FIGURES_SHOWN = 40    # leaves of the newest run's JSON listed in full


def read_records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SystemExit(f"report.py: {path}:{number}: not a JSON line ({err.msg})") from None
    return records


def side_by_side(name: str) -> dict:
    """The side-by-side record of ``name`` (train_step, loader, caption_e2e): the original's and our figures from
    one machine and day, with that machine and day."""
    for record in read_records(RESULTS_DIR / f"{SIDE_BY_SIDE}.jsonl"):
        if record.get("name") == name:
            return {key: value for key, value in record.items() if key not in ("benchmark", "name")}
    raise KeyError(f"{RESULTS_DIR / SIDE_BY_SIDE}.jsonl has no record named {name!r}")


# ------------------------------------------------------------------------------------------------ recording

def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(name: str, command: list[str]) -> int:
    """Run ``command``, echo its output, and append its last line (a JSON object) as a record of ``name``."""
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    last = ""
    for line in process.stdout:
        sys.stdout.write(line)
        if line.strip():
            last = line
    status = process.wait()
    if status != 0:
        print(f"report.py: {name} exited with status {status}; nothing recorded", file=sys.stderr)
        return status
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        print(f"report.py: {name}: the last output line is not JSON; nothing recorded", file=sys.stderr)
        return 1
    entry = {"benchmark": name, "date": started.strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
             "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
             "commit": git_commit(), "command": " ".join(command), "result": result}
    RESULTS_DIR.mkdir(exist_ok=True)
    with open(RESULTS_DIR / f"{name}.jsonl", "a") as out:
        out.write(json.dumps(entry) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ RESULTS.md

def leaves(value, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, scalar) for every number, string and bool of a JSON value; lists of scalars stay whole."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in leaves(item, f"{prefix}{key}.")]
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return [pair for index, item in enumerate(value) for pair in leaves(item, f"{prefix}{index}.")]
    return [(prefix.rstrip("."), value)]


def cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def side_by_side_section(records: list[dict]) -> list[str]:
    lines = ["## Against the original, side by side", "",
             "The original FAVDBench code cannot run here (apex, mmcv, its own clones); these are the runs of it next "
             "to ours on one machine and day. Benchmarks quote them; none divides today's time by them.", "",
             "| work | where and when | the original | ours | ours against the original |", "|---|---|---|---|---|"]
    for record in records:
        figures = lambda side: ", ".join(f"{k} {v}" for k, v in record[side].items())  # noqa: E731
        ratio = ", ".join(f"{k} {v}x" for k, v in record["ratio"].items())
        lines.append(f"| {cell(record['setting'])} | {cell(record['host'])}, {record['date']} | "
                     f"{figures('original')} | {figures('ours')} | {ratio} |")
    lines += ["", "A ratio above 1 for speed means ours is faster; for memory, below 1 means ours uses less.", ""]
    return lines


def archive_section(records: list[dict]) -> list[str]:
    lines = ["## Earlier measurements, moved from the docs", "",
             "Measured before benchmark runs were recorded, so the day is not known; the host and its load are as each "
             "paragraph says. Ratios to the original code from those days are left out: the side-by-side run above "
             "is the comparison.", ""]
    for record in records:
        lines += [f"### {record['name']}", "", f"*From {record['source']}; measured {record['date']} on "
                  f"{record['host']}.*", "", record["text"], ""]
    return lines


def benchmark_section(name: str, records: list[dict]) -> list[str]:
    newest = records[-1]
    lines = [f"## {name}", "", f"`{newest['command']}`", "",
             "| date | host | CPUs | load before / after | commit |", "|---|---|---|---|---|"]
    for entry in reversed(records[-RUNS_SHOWN:]):
        load = " / ".join(map(str, entry.get("load_average_before_after", [])))
        lines.append(f"| {entry['date']} | {cell(entry['host'])} ({cell(entry.get('cpu', ''))}) | "
                     f"{entry.get('cpus', '')} | {load} | {entry.get('commit', '')} |")
    pairs = leaves(newest["result"])
    lines += ["", f"Newest run ({newest['date']}):", "", "| figure | value |", "|---|---|"]
    lines += [f"| {cell(key)} | {cell(value)} |" for key, value in pairs[:FIGURES_SHOWN]]
    if len(pairs) > FIGURES_SHOWN:
        lines.append(f"| ... | {len(pairs) - FIGURES_SHOWN} more in benchmarks/results/{name}.jsonl |")
    return lines + [""]


def write(out: Path = RESULTS_MD) -> Path:
    files = sorted(RESULTS_DIR.glob("*.jsonl"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmark results", "",
             f"Written by `benchmarks/report.py write` on {now} on {platform.node()} from "
             "`benchmarks/results/*.jsonl` (`make bench` records and rewrites it; do not edit by hand). Every figure "
             "says where and when it was measured; compare figures only within one run.", ""]
    side = RESULTS_DIR / f"{SIDE_BY_SIDE}.jsonl"
    if side.is_file():
        lines += side_by_side_section(read_records(side))
    archive = RESULTS_DIR / f"{ARCHIVE}.jsonl"
    for path in files:
        if path not in (side, archive):
            records = read_records(path)
            if records:
                lines += benchmark_section(path.stem, records)
    if archive.is_file():
        lines += archive_section(read_records(archive))
    text = "\n".join(lines).rstrip() + "\n"
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, out)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = []
    if "--" in argv:
        command, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("record", help="run a benchmark (after --) and append its JSON line").add_argument("name")
    sub.add_parser("write", help="write benchmarks/RESULTS.md from benchmarks/results/*.jsonl")
    args = parser.parse_args(argv)
    if args.action == "record":
        if not command:
            parser.error("record NAME -- COMMAND: the command to run is missing")
        return record(args.name, command)
    print(f"wrote {write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
