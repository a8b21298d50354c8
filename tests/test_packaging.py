"""The distributions: a complete sdist, and a wheel that delivers the workshop to a fresh environment.

``python -m build`` builds the sdist, then the wheel *from the sdist* (as a
release does), once for this module. Then:

* the sdist holds everything ``make test`` needs (every file git tracks, when
  this is a git checkout; a fixed list of what the Makefile, CI and the tests
  use, always), with the executable bits the Makefile relies on;
* the wheel carries the lessons (byte for byte), ``py.typed``, the licence, the
  JupyterLab defaults and the metadata (licence, classifiers, URLs, extras);
* installed into a fresh virtual environment outside the repository,
  ``payflow-lab --version`` and ``payflow-lab lessons DIR`` work, and nbval
  passes over the lessons it copied, the kernel importing the installed wheel.

About the fresh environment: the wheel itself is installed with pip into a new
venv (no ``--system-site-packages``), so ``payflow_lab`` comes from the wheel
and nothing else. Its *dependencies* (the ``lab`` and ``test`` extras:
JupyterLab, nbval, playwright... several hundred MB) are not downloaded
again: a ``.pth`` file puts this test environment's site-packages *after* the
venv's own, and the test checks first that every requirement the wheel
declares for those extras is met there. What this proves is what the issue
asks (the wheel delivers a workshop that runs); what it leaves to pip is
resolving the same requirements from the index, which ``make lab`` and
``make test`` exercise on every fresh clone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from payflow_lab.app.workshop import FIRST_LESSON, shipped_files

ROOT = Path(__file__).resolve().parents[1]

#: What `make test`, CI and the tests read from a source tree, beyond the package and its tests.
NEEDED_BY_MAKE_TEST = [
    "Makefile",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "environment.yml",
    "hatch_build.py",
    ".ci/run",
    "tools/build_lessons.py",
    "tools/ensure-chromium",
    "tools/ensure-postgresql",
    "docs/json-contract.md",
    "docs/resilience/index.md",
    "tests/conftest.py",
    "tests/browser/conftest.py",
    "tests/browser/lessons_spec.py",
    "lessons/FACILITATOR.md",
    "lessons/sanitize.cfg",
    f"lessons/{FIRST_LESSON}",
    "binder/requirements.txt",
    "binder/postBuild",
    "binder/runtime.txt",
    "jupyter-config/share/jupyter/lab/settings/overrides.d/payflow-lab.json",
]
EXECUTABLE = [".ci/run", "tools/ensure-chromium", "tools/ensure-postgresql", "binder/postBuild"]


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def sdist_members(sdist: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
    prefix = members[0].name.split("/")[0] + "/"
    return {m.name[len(prefix) :]: m for m in members if m.name.startswith(prefix) and m.isfile()}


def git_tracked_files() -> list[str] | None:
    if not (ROOT / ".git").exists():
        return None  # an unpacked sdist: the fixed list below is the check
    done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return [name for name in done.stdout.split("\0") if name and (ROOT / name).is_file()]


def test_the_sdist_holds_everything_make_test_needs(distributions: dict[str, Path]) -> None:
    members = sdist_members(distributions["sdist"])
    missing = [name for name in NEEDED_BY_MAKE_TEST if name not in members]
    assert not missing, f"the sdist lacks {missing}"
    for name in ("docs", "tools", "tests", "lessons", "payflow_lab"):
        here = [
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / name).rglob("*")
            if p.is_file()
            and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(ROOT).parts)
        ]
        assert set(here) <= set(members), f"{name}/: {sorted(set(here) - set(members))[:5]} not in the sdist"
    tracked = git_tracked_files()
    if tracked is not None:
        assert not set(tracked) - set(members), f"tracked but not in the sdist: {sorted(set(tracked) - set(members))}"
    for name in EXECUTABLE:
        assert members[name].mode & 0o111, f"{name} lost its executable bit in the sdist"
    assert not [name for name in members if "__pycache__" in name or ".ipynb_checkpoints" in name]


def wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_wheel_carries_the_workshop_the_licence_and_the_metadata(distributions: dict[str, Path]) -> None:
    files = wheel_files(distributions["wheel"])
    workshop = {
        name.removeprefix("payflow_lab/_workshop/"): data
        for name, data in files.items()
        if name.startswith("payflow_lab/_workshop/")
    }
    assert workshop == shipped_files(), "the wheel's lessons are not the repository's"
    assert "payflow_lab/py.typed" in files
    assert not [name for name in files if "__pycache__" in name or "/." in name]
    info = next(name.split("/")[0] for name in files if name.endswith(".dist-info/METADATA"))
    assert files[f"{info}/licenses/LICENSE"].startswith(b"MIT License")
    data = next(
        name.split("/")[0]
        for name in files
        if name.endswith(".data/data/share/jupyter/lab/settings/overrides.d/payflow-lab.json")
    )
    overrides = json.loads(files[f"{data}/data/share/jupyter/lab/settings/overrides.d/payflow-lab.json"])
    assert overrides["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}
    metadata = Parser().parsestr(files[f"{info}/METADATA"].decode())
    assert metadata["License-Expression"] == "MIT"
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    assert {"lab", "test"} <= set(metadata.get_all("Provides-Extra"))


# ------------------------------------------------------------------------------ a fresh venv
@pytest.fixture(scope="module")
def fresh_venv(distributions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    assert not venv.resolve().is_relative_to(ROOT.resolve())
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            str(distributions["wheel"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_payflow_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


def in_venv(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(PYTHONNOUSERSITE="1", VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


REQUIREMENTS_MET = """
import json, sys
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
unmet = []
for text in requires("payflow-lab"):
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({"extra": extra}) for extra in ("", "lab", "test")):
        continue
    try:
        found = version(req.name)
    except PackageNotFoundError:
        found = None
    if found is None or not req.specifier.contains(found, prereleases=True):
        unmet.append(f"{req} (found {found})")
import payflow_lab
print(json.dumps({"unmet": unmet, "module": payflow_lab.__file__}))
"""


def wheel_version(wheel: Path) -> str:
    files = wheel_files(wheel)
    info = next(name for name in files if name.endswith(".dist-info/METADATA"))
    return Parser().parsestr(files[info].decode())["Version"]


@pytest.mark.slow
def test_the_wheel_installs_and_copies_the_workshop_out(
    distributions: dict[str, Path], fresh_venv: Path, tmp_path: Path
) -> None:
    python = fresh_venv / "bin" / "python"
    checked = in_venv(fresh_venv, str(python), "-c", REQUIREMENTS_MET, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["unmet"] == [], f"the wheel's lab/test requirements are not met: {report['unmet']}"
    assert Path(report["module"]).resolve().is_relative_to(fresh_venv.resolve()), report["module"]

    version = in_venv(fresh_venv, str(fresh_venv / "bin" / "payflow-lab"), "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"payflow-lab {wheel_version(distributions['wheel'])}\n")

    copied = in_venv(fresh_venv, str(fresh_venv / "bin" / "payflow-lab"), "lessons", str(tmp_path / "x"), cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert f"jupyter lab --notebook-dir={tmp_path / 'x'}" in copied.stdout.replace(str(fresh_venv / "bin") + "/", "")
    for name, data in shipped_files().items():
        assert (tmp_path / "x" / name).read_bytes() == data


@pytest.mark.slow
def test_the_copied_lessons_pass_nbval_on_the_installed_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    lessons = tmp_path / "x"
    copied = in_venv(fresh_venv, str(fresh_venv / "bin" / "payflow-lab"), "lessons", str(lessons), cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    report = tmp_path / "nbval.xml"
    done = in_venv(
        fresh_venv,
        str(fresh_venv / "bin" / "python"),
        "-m",
        "pytest",
        str(lessons),
        "--nbval-lax",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(lessons / "sanitize.cfg"),
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={report}",
        cwd=lessons,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    import xml.etree.ElementTree as ET

    cases = ET.parse(report).getroot().iter("testcase")
    ran = {case.get("classname", "").split("::")[0].split(".")[0] for case in cases}
    notebooks = {name.removesuffix(".ipynb") for name in shipped_files() if name.endswith(".ipynb")}
    assert notebooks <= ran, f"nbval ran no cell of {sorted(notebooks - ran)}"
