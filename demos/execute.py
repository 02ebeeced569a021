"""Execute the tutorial notebooks top to bottom and save them with their outputs.

    python demos/execute.py                      # every notebook, in place, on runs/tutorial
    python demos/execute.py demos/04_*.ipynb     # some of them
    INTERP_EXT_FAST=1 python demos/execute.py --check   # fast mode, outputs not saved

Each notebook runs with the repository root as its working directory, so the run it makes
or opens (``INTERP_EXT_RUN``, default ``runs/tutorial``) is shared by all of them.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, workdir: Path, save: bool, timeout: int = 3600) -> float:
    """Run one notebook in ``workdir``; save it with its outputs when ``save``. Returns seconds."""
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    if save:
        for cell in nb.cells:
            cell.metadata.pop("execution", None)  # no wall-clock stamps in the saved file
            if "outputs" in cell:
                cell.outputs = merged_streams(cell.outputs)
        nbformat.write(nb, path)
    return time.perf_counter() - start


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAR = re.compile(r"^(.*?):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def final_frames(text: str) -> str:
    """Each progress bar's last frame, at the place the bar first appeared: a line's text after
    its last carriage return, cursor-moving escapes (nested bars) dropped, and later frames of
    a bar replacing its earlier ones (a saved notebook shows every frame otherwise). A frame of
    the same name after a finished bar, or with a lower count, starts a new bar."""
    lines: list[str] = []
    where: dict[str, tuple[int, int, bool]] = {}
    for raw in text.split("\n"):
        line = ANSI.sub("", raw.rsplit("\r", 1)[-1])
        bar = BAR.match(line)
        if bar:
            name, count, total = bar.group(1), int(bar.group(2)), int(bar.group(3))
            seen = where.get(name)
            if seen and count >= seen[1] and not seen[2]:
                lines[seen[0]] = line
                where[name] = (seen[0], count, count >= total)
                continue
            where[name] = (len(lines), count, count >= total)
        lines.append(line)
    return "\n".join(lines)


def merged_streams(outputs: list) -> list:
    """Consecutive stream outputs of one name joined, showing each progress bar's last frame."""
    out: list = []
    for o in outputs:
        if (
            o.get("output_type") == "stream"
            and out
            and out[-1].get("output_type") == "stream"
            and out[-1].get("name") == o.get("name")
        ):
            out[-1]["text"] += o["text"]
        else:
            out.append(o)
    for o in out:
        if o.get("output_type") == "stream":
            o["text"] = final_frames(o["text"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    parser.add_argument("--check", action="store_true", help="run only; do not save outputs")
    parser.add_argument(
        "--data-dir",
        help="WikiText-2 raw folder the tutorial run trains on (INTERP_EXT_DATA_DIR)",
    )
    args = parser.parse_args()
    if args.data_dir:  # relative to the repository root, where the notebooks run
        os.environ["INTERP_EXT_DATA_DIR"] = os.path.relpath(
            Path(args.data_dir).resolve(), HERE.parent
        )
    for path in args.notebooks:
        seconds = execute(path.resolve(), HERE.parent, save=not args.check)
        print(f"{path.name}: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
