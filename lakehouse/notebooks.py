"""Run the notebooks headless (as CI does) and keep them free of outputs in git.

    python -m lakehouse.notebooks                      # every notebooks/*.ipynb, executed copies in var/notebooks
    python -m lakehouse.notebooks notebooks/02_person_timeline.ipynb --root /path/to/root
    python -m lakehouse.notebooks --strip              # remove outputs before a commit

Each notebook runs in its own Python kernel (this interpreter's, so `lakehouse` imports) with the
folder of the notebook as its working directory; `--conf-dir`, `--env` and `--root` reach it as
LAKEHOUSE_CONF_DIR, LAKEHOUSE_ENV and LAKEHOUSE_ROOT. A notebook's cell tagged `checks` prints one JSON
object: what the notebook found, which tests compare with the tables themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
NOTEBOOKS = PROJECT / "notebooks"
CHECKS_TAG = "checks"


def _nbformat():
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as err:  # an optional extra: the pipeline does not need it
        from lakehouse.errors import EnvironmentProblem

        raise EnvironmentProblem(f"{err.name} is missing: install the notebook extra "
                                 "(`.venv/bin/pip install -e '.[notebooks]'`, included in `make setup`)") from err
    return nbformat, NotebookClient


def execute(path: Path, out_dir: Path | None = None, env: dict[str, str] | None = None, timeout: int = 1200):
    """Execute a notebook top to bottom; a failing cell raises nbclient's CellExecutionError naming it.
    The executed copy (with outputs) goes to `out_dir`, never over the committed notebook."""
    nbformat, NotebookClient = _nbformat()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute(env={**os.environ, **(env or {})})
    finally:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, out_dir / path.name)
    return notebook


def checks(notebook) -> dict:
    """The JSON object printed by the cell tagged `checks`."""
    for cell in notebook.cells:
        if CHECKS_TAG in cell.get("metadata", {}).get("tags", []):
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            return json.loads(text.strip().splitlines()[-1])
    raise LookupError("no cell tagged 'checks'")


def _with_outputs(notebook) -> bool:
    return any(c.get("outputs") or c.get("execution_count") for c in notebook.cells if c.cell_type == "code")


def has_outputs(path: Path) -> bool:
    nbformat, _ = _nbformat()
    return _with_outputs(nbformat.read(path, as_version=4))


def strip(path: Path) -> bool:
    """Remove outputs and execution counts; True if the file changed."""
    nbformat, _ = _nbformat()
    notebook = nbformat.read(path, as_version=4)
    if not _with_outputs(notebook):
        return False
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.notebooks", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--strip", action="store_true", help="remove outputs instead of running")
    parser.add_argument("--out", type=Path, default=PROJECT / "var" / "notebooks", help="executed copies")
    parser.add_argument("--conf-dir", help="configuration folder (LAKEHOUSE_CONF_DIR)")
    parser.add_argument("--env", help="environment overlay (LAKEHOUSE_ENV)")
    parser.add_argument("--root", help="lakehouse root (LAKEHOUSE_ROOT)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.strip:
        for path in paths:
            print(f"{'stripped' if strip(path) else 'clean   '} {path}")
        return 0
    env = {name: str(Path(value).resolve()) if name != "LAKEHOUSE_ENV" and "://" not in value else value
           for name, value in (("LAKEHOUSE_CONF_DIR", args.conf_dir), ("LAKEHOUSE_ENV", args.env),
                               ("LAKEHOUSE_ROOT", args.root)) if value}
    failed = 0
    for path in paths:
        try:
            found = checks(execute(path.resolve(), args.out, env))
            print(f"ok     {path}: {json.dumps(found)[:200]}")
        except Exception as err:  # report every notebook, then fail
            failed += 1
            print(f"FAILED {path}: {type(err).__name__}: {str(err)[-2000:]}", file=sys.stderr)
    print(f"{len(paths) - failed}/{len(paths)} notebooks ran; executed copies in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
