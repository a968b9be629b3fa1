"""Lines of product code (src/**/*.py) by the issue that wrote them, for issue 22's budget: the core at most
12,000 lines (13,816 when the issue was filed, at f7215ed), the features filed after it adding to that.

Every line at HEAD is attributed by ``git blame`` to the commit that last wrote it. Commits of the later features'
branches (the second parents of their merges) and the feature commits made on main count for their issue; every
other line counts for the core. Refactoring passes that rewrote feature code took its lines into the core, so
the core figure is an upper bound. Prints one JSON object as the last line.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILED_AT = "f7215ed"
CORE_BUDGET = 12_000
LINE_HEADER = re.compile(r"^([0-9a-f]{40}) \d+ \d+(?: \d+)?$", re.MULTILINE)  # one per line of the file
# issue -> merges of its branches, and its commits made on main (short hashes of this repository's history)
FEATURE_MERGES = {25: ("102bfc6", "4861ab8"), 23: ("ccbd3f1", "77ddd56"), 24: ("2e186fb", "fd5b5e7")}
FEATURE_COMMITS = {25: ("f7215ed..b6ed280",),
                   23: ("e7f439b", "eab7c56", "71e3f63", "6664e13", "1da778d", "e04d1e8", "3d66f00", "a77acc7"),
                   24: ("326286a", "d9a4b0e", "33ee1b4", "c24689d")}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def feature_commits() -> dict[str, int]:
    owner = {}
    for issue, merges in FEATURE_MERGES.items():
        for merge in merges:
            owner.update(dict.fromkeys(git("rev-list", f"{merge}^1..{merge}^2").split(), issue))
    for issue, revisions in FEATURE_COMMITS.items():
        for revision in revisions:
            commits = git("rev-list", revision) if ".." in revision else git("rev-parse", revision)
            owner.update(dict.fromkeys(commits.split(), issue))
    return owner


def main() -> dict:
    owner = feature_commits()
    lines = collections.Counter()
    for path in git("ls-files", "src").split():
        if not path.endswith(".py"):
            continue
        for header in LINE_HEADER.finditer(git("blame", "--porcelain", "HEAD", "--", path)):
            lines[owner.get(header.group(1), 22)] += 1
    result = {"total": sum(lines.values()), "core": lines[22], "core_budget": CORE_BUDGET,
              "by_later_issue": {str(issue): lines[issue] for issue in sorted(FEATURE_MERGES)},
              "filed_at": FILED_AT, "core_within_budget": lines[22] <= CORE_BUDGET}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
