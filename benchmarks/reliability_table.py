"""Print the README's "Reliability" table from ``benchmarks/results/reliability.json``.

That file is written by the long fault-injection suite (``make reliability``); this script
only formats it: ``python benchmarks/reliability_table.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"


def table(results: dict) -> str:
    lines = ["| fault class | trials | what happened |", "|---|---:|---|"]
    for name, entry in results["classes"].items():
        outcomes = "; ".join(f"{count}: {what}" for what, count in entry["outcomes"].items())
        lines.append(f"| {name} | {entry['trials']} | {outcomes} |")
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    results = json.loads(path.read_text())
    print(table(results))
    total = sum(e["trials"] for e in results["classes"].values())
    print(
        f"\n{total} trials; `{results['command']}` on {results['date']} ({results['machine']}),"
        f" pytest exit status {results['exit_status']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
