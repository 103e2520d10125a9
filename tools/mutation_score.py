"""The mutation score per module from ``mutmut results`` output (``make mutate``).

Each line of ``mutmut results --all true`` names a mutant (``poller.state.x_commit__mutmut_3``)
and its status. Survivors must be listed in tests/MUTANTS.md with why they cannot change
behaviour; this prints the table and the survivors not yet listed, and exits 1 when a core
module scores below 85 % or a survivor is unexplained.

MUTANTS.md names survivors under a heading per module (``## poller/state.py``), each in
backquotes: a full name such as commit__mutmut_13 (or a method's, LibraryRecords.filter__mutmut_10),
then _14 for the same function, and
_14-_17 (each end in its own backquotes) for a range.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

TARGET = 0.85
ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+__mutmut_\d+):\s*(?P<status>[\w ]+?)\s*$")
HEADING = re.compile(r"^## (?P<module>poller/\S+\.py)\s*$")
NAMED = re.compile(r"(?P<dash>-?)`(?:(?:\w+\.)?(?P<function>\w+?)__mutmut_|_)(?P<number>\d+)`")


def explained_in(text: str) -> set[tuple[str, str, int]]:
    """(module, function, number) of every survivor the file explains."""
    explained: set[tuple[str, str, int]] = set()
    module, function, last = "", "", 0
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            module, function, last = heading["module"], "", 0
            continue
        for named in NAMED.finditer(line):
            number = int(named["number"])
            if named["function"]:
                function = named["function"]
            elif named["dash"] and function:
                explained.update((module, function, n) for n in range(last, number + 1))
            explained.add((module, function, number))
            last = number
    return explained


def function_of(name: str) -> tuple[str, int]:
    """``poller.state.xǁStateStoreǁcursor__mutmut_7`` -> ("cursor", 7); a module-level
    ``poller.events.x__typed_event__mutmut_3`` -> ("_typed_event", 3)."""
    dotted, number = name.rsplit("__mutmut_", 1)
    last = dotted.split(".")[-1]
    function = last.rsplit("ǁ", 1)[-1] if "ǁ" in last else last.removeprefix("x_")
    return function, int(number)


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
    explained = explained_in((ROOT / "tests" / "MUTANTS.md").read_text())
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
    unexplained = [
        name for name in survivors if (module_of(name), *function_of(name)) not in explained
    ]
    for name in unexplained:
        print(f"unexplained survivor: {name}")
    return 1 if failing or unexplained else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
