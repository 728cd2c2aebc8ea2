"""What every benchmark shares: its stated targets checked when it runs, its results as JSON,
fresh processes for its cases, and files in the page cache.

targets = Targets("overhead")
targets.at_most("flat: sl.load / load_state_dict", ratio, 0.1)
targets.finish(results, json_path)   # writes JSON, prints the verdicts, exit status 1 if one is missed
result = run_child(__file__, case, path)   # `script --child case path` in a fresh process: its JSON line
parser = options(__doc__, "files", repeat=5, directory="/tmp/structload-bench", child=("CASE", "PATH"))
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class Targets:
    def __init__(self, bench: str):
        self.bench = bench
        self.checks: list[dict] = []

    def at_most(self, name: str, value: float, limit: float) -> None:
        self.checks.append({"target": name, "value": value, "at_most": limit, "met": value <= limit})

    def at_least(self, name: str, value: float, limit: float) -> None:
        self.checks.append({"target": name, "value": value, "at_least": limit, "met": value >= limit})

    def finish(self, results: object, json_path: str | None = None) -> None:
        """Print every target's verdict, write results and verdicts as JSON, exit 1 if any is missed."""
        for check in self.checks:
            bound = f"<= {check['at_most']}" if "at_most" in check else f">= {check['at_least']}"
            verdict = "met" if check["met"] else "MISSED"
            print(f"target {check['target']}: {check['value']:.4g} ({bound}) {verdict}")
        path = Path(json_path) if json_path else RESULTS / f"{self.bench}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "bench": self.bench,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": results,
            "targets": self.checks,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"results written to {path}")
        if not all(check["met"] for check in self.checks):
            sys.exit(1)


def options(
    doc: str,
    bench: str,
    repeat: int,
    directory: str | None = None,
    child: tuple[str, str] | None = None,
    child_type=str,
) -> argparse.ArgumentParser:
    """The command line every benchmark shares (add its own options to it): ``--repeat``, ``--json``,
    ``--dir`` where it keeps its checkpoints, and the hidden ``--child A B`` that `run_child` passes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=repeat)
    if directory is not None:
        parser.add_argument("--dir", default=directory)
    where = f"default bench/results/{bench}.json"
    parser.add_argument("--json", metavar="PATH", help=f"where to write the results ({where})")
    if child is not None:
        parser.add_argument("--child", nargs=2, type=child_type, metavar=child, help=argparse.SUPPRESS)
    return parser


def run_child(script: str, *args: str) -> dict:
    """Run ``python script --child *args`` in a fresh process; the JSON object it prints last."""
    out = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm(paths) -> None:
    """Read every file once, so that it sits in the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
