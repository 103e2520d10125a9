"""The mutation score per module from ``mutmut results`` output (``make mutate``).

Each line of ``mutmut results --all true`` names a mutant (``poller.state.x_commit__mutmut_3``)
and its status. Survivors must be listed in tests/MUTANTS.md with why they cannot change
behaviour; this prints the table and the survivors not yet listed, and exits 1 when a core
module scores below 85 % or a survivor is unexplained.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

TARGET = 0.85
ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\s*(?P<name>[\w.]+__mutmut_\d+):\s*(?P<status>[\w ]+?)\s*$")


def module_of(name: str) -> str:
    dotted = name.split("__mutmut_")[0]
    parts = dotted.split(".")
    # poller.streams.feed.x_send -> poller/streams/feed.py
    for cut in range(len(parts), 0, -1):
        candidate = ROOT / Path(*parts[:cut]).with_suffix(".py")
        if candidate.exists():
            return str(candidate.relative_to(ROOT))
    return dotted


def main(results: Path) -> int:
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in results.read_text().splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        status = match["status"]
        statuses[module_of(match["name"])][status] += 1
        if status == "survived":
            survivors.append(match["name"])
    explained = (ROOT / "tests" / "MUTANTS.md").read_text()
    failing = False
    print(f"{'module':34} {'killed':>7} {'survived':>9} {'other':>6} {'score':>7}")
    for module, counts in sorted(statuses.items()):
        killed = counts["killed"] + counts["timeout"]
        survived = counts["survived"]
        other = sum(counts.values()) - killed - survived
        tested = killed + survived
        score = killed / tested if tested else 1.0
        failing |= score < TARGET
        print(f"{module:34} {killed:7} {survived:9} {other:6} {score:7.1%}")
    unexplained = [name for name in survivors if name not in explained]
    for name in unexplained:
        print(f"unexplained survivor: {name}")
    return 1 if failing or unexplained else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
