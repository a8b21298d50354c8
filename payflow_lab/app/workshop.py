"""The workshop as package data, and ``payflow-lab lessons [DIR]`` to copy it out for a learner.

``pip install "payflow-lab[lab]"`` carries the lesson notebooks,
``FACILITATOR.md`` and nbval's ``sanitize.cfg`` inside the package
(``payflow_lab/_workshop/``, put there by ``hatch_build.py``); in a source
checkout they are read from ``lessons/``. ::

    payflow-lab lessons                 # into ./payflow-lab-lessons
    payflow-lab lessons ~/workshop      # anywhere; then the command it prints opens them

A learner's notebooks are their work, so a second run never overwrites a copy
they changed. Each copy writes a manifest (:data:`MANIFEST`, the SHA-256 of
every file as it was copied); on the next run a file is

* *new* if it is not there: copied;
* *up to date* if it equals the file this version ships: left alone;
* *untouched* if it still equals what was copied last time (an older
  version's lesson nobody edited): refreshed to this version;
* *edited* otherwise: the run stops before writing anything and names them;
  ``--force`` overwrites them.

Files the learner added, and lessons an older version shipped that this one
does not, are never touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from payflow_lab.core.errors import EditedLessons, WorkshopMissing

__all__ = [
    "DEFAULT_DIR",
    "FIRST_LESSON",
    "MANIFEST",
    "CopyPlan",
    "EditedLessons",
    "copy_lessons",
    "open_command",
    "plan_copy",
    "shipped_files",
    "workshop_source",
]

#: Where ``payflow-lab lessons`` copies to when no folder is given.
DEFAULT_DIR = "payflow-lab-lessons"
#: The notebook a learner opens first.
FIRST_LESSON = "00_start_here.ipynb"
#: What the last copy wrote, so that an untouched copy can be refreshed and an edited one is kept.
MANIFEST = ".payflow-lab-lessons.json"


def workshop_source() -> Traversable:
    """The folder the lessons are read from: the package's ``_workshop`` or, in a checkout, ``lessons/``."""
    packaged = resources.files("payflow_lab") / "_workshop"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "lessons"
    if (checkout / FIRST_LESSON).is_file():
        return checkout
    raise WorkshopMissing(
        "this installation of payflow-lab carries no lessons (no payflow_lab/_workshop/, and "
        "not a source checkout with lessons/); reinstall it from a wheel or a clone"
    )


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            found.update(_walk(entry, f"{prefix}{entry.name}/"))
        else:
            found[f"{prefix}{entry.name}"] = entry.read_bytes()
    return found


def shipped_files() -> dict[str, bytes]:
    """Every workshop file this version ships: relative POSIX path -> content."""
    files = _walk(workshop_source())
    if FIRST_LESSON not in files:
        raise WorkshopMissing(f"the workshop this installation carries has no {FIRST_LESSON}")
    return dict(sorted(files.items()))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class CopyPlan:
    """What copying the workshop into ``dest`` would do, file by file (relative POSIX paths)."""

    dest: Path
    new: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)

    @property
    def to_write(self) -> list[str]:
        return sorted(self.new + self.untouched)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dir": str(self.dest),
            "new": self.new,
            "up_to_date": self.up_to_date,
            "refreshed": self.untouched,
            "edited": self.edited,
        }


def _read_manifest(dest: Path) -> dict[str, str]:
    try:
        data = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
        files = data.get("files", {})
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}  # no manifest (or a damaged one): every differing file counts as edited, the safe side


def plan_copy(dest: Path, files: dict[str, bytes] | None = None) -> CopyPlan:
    """Compare ``dest`` with the shipped files and the last copy's manifest; write nothing."""
    files = shipped_files() if files is None else files
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} exists and is not a folder")
    manifest = _read_manifest(dest)
    plan = CopyPlan(dest)
    for name, data in files.items():
        target = dest / name
        if not target.exists():
            plan.new.append(name)
            continue
        current = _digest(target.read_bytes()) if target.is_file() else None
        if current == _digest(data):
            plan.up_to_date.append(name)
        elif current is not None and manifest.get(name) == current:
            plan.untouched.append(name)
        else:
            plan.edited.append(name)
    return plan


def copy_lessons(dest: Path, *, force: bool = False) -> CopyPlan:
    """Copy the workshop into ``dest`` (created if needed); refuse, writing nothing, if a copied file was edited.

    With ``force`` the edited files are overwritten too. Each file is written to a
    temporary name and renamed, so an interrupted copy leaves whole files only.
    """
    files = shipped_files()
    plan = plan_copy(dest, files)
    if plan.edited and not force:
        raise EditedLessons(plan)
    dest.mkdir(parents=True, exist_ok=True)
    for name in plan.to_write + (plan.edited if force else []):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(files[name])
        os.replace(partial, target)
    from payflow_lab import __version__

    manifest = {"payflow_lab": __version__, "files": {name: _digest(data) for name, data in files.items()}}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return plan


def open_command(dest: Path) -> list[str]:
    """The ``jupyter lab`` command that opens the copied workshop at its first lesson, from where we are.

    The lesson's path is given from the current directory (Jupyter resolves it so),
    ``--notebook-dir`` is the folder its file browser shows, the extension manager is
    read-only as in ``make lab``, and root is allowed when we are root.
    """
    here = Path(sys.executable).parent
    ours = shutil.which("jupyter", path=str(here))
    jupyter = "jupyter" if ours is None or shutil.which("jupyter") == ours else ours
    command = [jupyter, "lab", f"--notebook-dir={dest}", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    command.append(str(dest / FIRST_LESSON))
    return command


def _has_jupyterlab() -> bool:
    from importlib.util import find_spec

    return find_spec("jupyterlab") is not None


# ------------------------------------------------------------------------ command line
def register(sub: Any) -> None:
    """Add ``payflow-lab lessons`` to the subcommands."""
    p = sub.add_parser(
        "lessons",
        help="copy the workshop's notebooks into a folder, and say how to open them",
        description="Copy the lesson notebooks, FACILITATOR.md and sanitize.cfg into DIR (created if needed) "
        "and print the command that opens them in JupyterLab. Running it again updates the "
        "lessons you did not change and refuses, writing nothing, if you changed one.",
        epilog="examples:\n"
        "  payflow-lab lessons                  # into ./payflow-lab-lessons\n"
        "  payflow-lab lessons ~/payflow        # anywhere\n"
        "  payflow-lab lessons ~/payflow --force   # also overwrite lessons you edited",
    )
    p.add_argument(
        "dir",
        nargs="?",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"folder to copy the workshop into (default: ./{DEFAULT_DIR})",
    )
    p.add_argument("--force", action="store_true", help="overwrite lessons you edited since they were copied")
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON object on stdout and nothing else",
    )
    p.set_defaults(handler=_cmd_lessons)


def _cmd_lessons(args: argparse.Namespace) -> int:
    dest = Path(os.path.expanduser(args.dir))
    try:
        plan = copy_lessons(dest, force=args.force)
    except EditedLessons as exc:
        print(f"payflow-lab: {exc}", file=sys.stderr)
        return 1
    except (WorkshopMissing, NotADirectoryError) as exc:
        print(f"payflow-lab: error: {exc}", file=sys.stderr)
        return 1
    command = open_command(dest)
    if getattr(args, "json", False):
        sys.stdout.write(
            json.dumps(
                {
                    **plan.as_dict(),
                    "overwritten": plan.edited if args.force else [],
                    "open_command": command,
                    "jupyterlab_installed": _has_jupyterlab(),
                },
                indent=2,
            )
            + "\n"
        )
        return 0
    done = []
    if plan.new:
        done.append(f"copied {len(plan.new)} new file(s)")
    if plan.untouched:
        done.append(f"updated {len(plan.untouched)} you had not changed ({', '.join(plan.untouched)})")
    if plan.edited:
        done.append(f"overwrote {len(plan.edited)} you had edited ({', '.join(plan.edited)})")
    if plan.up_to_date:
        done.append(f"{len(plan.up_to_date)} already up to date")
    print(f"The workshop is in {dest}: {'; '.join(done)}.")
    if not _has_jupyterlab():
        print('JupyterLab is not installed in this environment; first: pip install "payflow-lab[lab]"')
    print(f"Open it with:\n\n    {shlex.join(command)}\n")
    return 0
