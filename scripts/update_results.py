"""Publishes a `jaxtar demo` run's numbers, so the README never quotes numbers the code no longer produces.

Usage:
    python scripts/update_results.py runs/demo-X     # a full run: copy its demo.json to docs/results/demo.json and
                                                     # rewrite the README's demo block from it
    python scripts/update_results.py runs/demo-Q     # a --quick run: refresh docs/results/demo-quick.json, the
                                                     # snapshot tests/test_demo.py compares the quick demo with
    python scripts/update_results.py                 # rewrite the README's demo block from docs/results/demo.json
    python scripts/update_results.py --check         # exit 1 if the README's demo block is not up to date

``make results [RUN=runs/demo-X]`` runs it. The block is the text between ``<!-- demo-table:start -->`` and
``<!-- demo-table:end -->`` in README.md, rendered by `jaxtar.demo_report.readme_results` (its table is `demo_table`, the
one the demo prints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxtar.demo_report import demo_numbers, with_readme_results
from jaxtar.eval import RedTeamResults

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def run_meta(run_dir: Path) -> dict:
    """A demo run's demo.json, completed from its redteam/results.json when written by an older jaxtar (no
    ``results`` / ``numbers``), with the run folder's own paths written as ``OUT`` and the repository's relative."""
    meta = json.loads((run_dir / "demo.json").read_text())
    if "results" not in meta:
        meta["results"] = json.loads((run_dir / "redteam" / "results.json").read_text())
    if "numbers" not in meta:
        meta["numbers"] = demo_numbers(RedTeamResults.from_dict(meta["results"]))
    text = json.dumps(meta, indent=2, sort_keys=True)
    for prefix in sorted({str(run_dir), str(run_dir.resolve())}, key=len, reverse=True):
        text = text.replace(json.dumps(prefix)[1:-1], "OUT")
    return json.loads(text.replace(json.dumps(str(ROOT) + "/")[1:-1], ""))


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="a finished `jaxtar demo` output folder")
    parser.add_argument("--check", action="store_true", help="only check the README (exit 1 if stale)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run is not None:
        meta = run_meta(args.run)
        if meta.get("quick"):
            write_json(RESULTS / "demo-quick.json", meta)
            return 0
        write_json(RESULTS / "demo.json", meta)
    meta = json.loads((RESULTS / "demo.json").read_text())
    old = args.readme.read_text()
    new = with_readme_results(old, meta)
    if args.check:
        if new != old:
            print(f"{args.readme} is stale: run `make results`", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.readme.write_text(new)
        print(f"rewrote the demo block of {args.readme.name}")
    else:
        print(f"{args.readme.name} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
