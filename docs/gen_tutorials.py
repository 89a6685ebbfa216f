"""Run the tutorials in examples/ and write their documentation pages.

    python docs/gen_tutorials.py [--quick] [NN ...]

For each ``examples/NN_name.py``: runs it with ``--out docs/tutorials/img/NN`` (full budget
unless ``--quick``), then writes ``docs/tutorials/NN_name.md`` from the script's docstring, its
printed output (the measured numbers) and its figures. ``make tutorials`` calls this.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs" / "tutorials"


def _markdown(doc: str) -> str:
    """The docstrings use reST double backticks; Markdown wants single ones."""
    return doc.replace("``", "`")


def page(path: Path, output: str, seconds: float, quick: bool) -> str:
    num = path.stem[:2]
    doc = ast.get_docstring(ast.parse(path.read_text())) or path.stem
    title, _, body = doc.partition("\n")
    body = re.sub(r"\n\s*Run: .*$", "", body.strip(), flags=re.S)
    figs = sorted((DOCS / "img" / num).glob("*.png"), key=lambda f: (f.stat().st_mtime, f.name))
    parts = [f"# {_markdown(title.strip())}\n", _markdown(body).strip() + "\n",
             "## Run it\n", f"```bash\npython examples/{path.name}            # about a minute on a laptop CPU\n"
             f"python examples/{path.name} --quick    # a few seconds (what the test suite runs)\n```\n",
             f"Source: `examples/{path.name}`; its test: `tests/test_tutorials.py`.\n",
             "## Output\n",
             f"Measured on a shared 2-core CPU, one thread{' (quick budget)' if quick else ''}, {seconds:.0f} s:\n",
             "```text\n" + output.strip() + "\n```\n", "## Figures\n"]
    for f in figs:
        caption = f.stem[3:].replace("_", " ")
        parts.append(f"![{caption}](img/{num}/{f.name})\n")
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="tutorial numbers to run (default: all)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    status = 0
    for path in sorted(EXAMPLES.glob("0*_*.py")):
        num = path.stem[:2]
        if a.only and num not in a.only:
            continue
        out = DOCS / "img" / num
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(path), "--out", str(out)] + (["--quick"] if a.quick else [])
        print("running", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            print(r.stdout, r.stderr, file=sys.stderr)
            status = 1
            continue
        output = "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("done in"))
        (DOCS / f"{path.stem}.md").write_text(page(path, output, time.perf_counter() - t0, a.quick))
        print(output, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
