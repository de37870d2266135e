"""Run the MONAI model zoo's own CI offline on the bundle zip, as a model-zoo pull request would be checked.

``python scripts/zoo_ci.py [--zoo DIR] [--python PY] [--work DIR]`` (``make zoo-ci``):

1. zips the bundle with :func:`custom.tools.packaging.build_archive` (the self-contained zip, ``custom`` inside);
2. lays out a temporary copy of the zoo (``ci/``, ``setup.cfg``, ``pyproject.toml``, ``models/``) and unzips the
   bundle into ``models/<name>/``; like a contributor's PR it lists the bundle in ``ci/bundle_custom_data.py``
   under :data:`ZOO_EXCLUSIONS` only (see the bundle README, "Model zoo CI") and adds the zoo-style unit test
   ``tests/bundle/zoo_unit_test.py`` as ``ci/unit_tests/test_<name>.py``;
3. runs ``ci/prepare_schema.py``, ``ci/verify_bundle.py -m min`` and ``-m full`` (with ``--python``: the zoo's CPU
   CI installs only the metadata's packages, which ``scripts/build_bundle_env.sh`` builds), the format check of
   the zoo's ``runtests.sh --codeformat`` (black ``--skip-magic-trailing-comma``, isort, flake8 with the zoo's
   ``setup.cfg`` / ``pyproject.toml``) on every ``.py`` file of the zip, the zoo's pre-commit checks of JSON
   (``pretty-format-json --no-sort-keys --indent=4``), trailing whitespace and end-of-file newlines, and the
   unit test through ``ci/unit_tests/runner.py``.

Nothing is downloaded: the zoo copy ships the metadata schema and ``large_files.yml`` lists no files. Every check
runs; the exit status is non-zero if any failed, and the last line names them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from custom.tools.packaging import BUNDLE_NAME, build_archive  # noqa: E402


def _default_zoo() -> Path:
    """``$ZOO_CI_DIR``, else the first ``shared/zoo-ci`` found inside or beside the checkout."""
    if os.environ.get("ZOO_CI_DIR"):
        return Path(os.environ["ZOO_CI_DIR"])
    candidates = [REPO / "shared" / "zoo-ci", REPO.parent / "shared" / "zoo-ci"]
    return next((c for c in candidates if (c / "ci").is_dir()), candidates[-1])


DEFAULT_ZOO = _default_zoo()
UNIT_TEST = REPO / "tests" / "bundle" / "zoo_unit_test.py"

# The zoo's exclusion lists (ci/bundle_custom_data.py) this bundle is put on, and why (stated in the bundle README):
ZOO_EXCLUSIONS = {
    # no released weights: models/model.pt, a "preferred file", is not in the bundle (large_files.yml is empty)
    "exclude_verify_preferred_files_list": "no released weights (models/model.pt)",
    # verify_torchscript runs ckpt_export, which scripts network_def: torch.jit.script of TAT fails
    "exclude_verify_torchscript_list": "torch.jit.script of the network fails; torch.export and ONNX instead",
}


def run_check(name: str, cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one check in ``cwd`` and print its outcome and time.

    Returns:
        the finished process (output captured; printed when the check failed).
    """
    start = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True, text=True)
    status = "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n")
    print(f"--- zoo-ci {name}: {status} in {time.monotonic() - start:.1f} s", flush=True)
    return proc


def layout(zoo: Path, work: Path, name: str = BUNDLE_NAME) -> Path:
    """Copy the zoo's CI files into ``work``, unzip the bundle zip into ``work/models/<name>``, register it.

    Args:
        zoo: the zoo copy (``ci/``, ``setup.cfg``, ``pyproject.toml``, ``models/``).
        work: an empty folder to lay the zoo out in.
        name: the bundle's name (its folder in ``models/``).

    Returns:
        the bundle folder ``work/models/<name>``.

    Raises:
        FileNotFoundError: ``zoo`` lacks ``ci/verify_bundle.py``.
    """
    if not (zoo / "ci" / "verify_bundle.py").is_file():
        raise FileNotFoundError(f"{zoo}: not a copy of the model zoo (no ci/verify_bundle.py); set ZOO_CI_DIR.")
    for item in ("ci", "models", "setup.cfg", "pyproject.toml", ".pre-commit-config.yaml"):
        src = zoo / item
        if src.is_dir():
            shutil.copytree(src, work / item)
        elif src.is_file():
            shutil.copy(src, work / item)
    for p in work.rglob("*"):  # the shared copy is read-only
        p.chmod(p.stat().st_mode | 0o200)
    archive = build_archive(work / "dist" / f"{name}.zip", name=name)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(work / "models")
    custom_data = work / "ci" / "bundle_custom_data.py"
    lines = [f"{lst}.append({name!r})  # {why}" for lst, why in ZOO_EXCLUSIONS.items()]
    custom_data.write_text(custom_data.read_text() + "\n# added by the bundle's PR\n" + "\n".join(lines) + "\n")
    shutil.copy(UNIT_TEST, work / "ci" / "unit_tests" / f"test_{name}.py")
    return work / "models" / name


def text_file_problems(bundle: Path) -> list[str]:
    """The zoo's pre-commit text checks (trailing-whitespace, end-of-file-fixer, mixed-line-ending).

    Returns:
        one line per problem, naming the file.
    """
    problems = []
    for f in sorted(bundle.rglob("*")):
        if not f.is_file() or f.suffix in (".pt", ".ts", ".onnx", ".pt2", ".gz", ".png"):
            continue
        text = f.read_bytes().decode("utf-8", errors="replace")
        rel = f.relative_to(bundle)
        if text and not text.endswith("\n"):
            problems.append(f"{rel}: no newline at the end of the file")
        if text.endswith("\n\n"):
            problems.append(f"{rel}: blank lines at the end of the file")
        if "\r\n" in text:
            problems.append(f"{rel}: CRLF line endings")
        for i, line in enumerate(text.split("\n"), 1):
            if line != line.rstrip():
                problems.append(f"{rel}:{i}: trailing whitespace")
    return problems


def checks(work: Path, bundle: Path, python: str) -> dict[str, list]:
    """The zoo's checks of ``models/<name>`` in ``work``, as name -> command (run from ``work``).

    Args:
        work: the zoo layout (:func:`layout`).
        bundle: the bundle folder in it.
        python: interpreter for prepare_schema / verify_bundle (the zoo's CPU CI: metadata packages only).
    """
    name = bundle.name
    py_files = sorted(str(p.relative_to(work)) for p in bundle.rglob("*.py"))
    json_files = sorted(str(p.relative_to(work)) for p in bundle.rglob("*.json"))
    me = sys.executable
    return {
        "prepare_schema": [python, "ci/prepare_schema.py", "--l", name],
        "verify_bundle -m min": [python, "ci/verify_bundle.py", "-b", name, "-m", "min"],
        "verify_bundle -m full": [python, "ci/verify_bundle.py", "-b", name, "-m", "full"],
        "black": [me, "-m", "black", "--skip-magic-trailing-comma", "--check", *py_files],
        "isort": [me, "-m", "isort", "--check", *py_files],
        "flake8": [me, "-m", "flake8", "--count", "--statistics", *py_files],
        "pretty-format-json": [Path(me).parent / "pretty-format-json", "--no-sort-keys", "--indent=4", *json_files],
        "unit test": [me, "ci/unit_tests/runner.py", "-b", name],
    }


def child_env() -> dict:
    """The environment of the checks: no PYTHONPATH / virtualenv of the caller, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "VIRTUAL_ENV"))}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(DEFAULT_ZOO), help="the model zoo copy (default: $ZOO_CI_DIR)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for verify_bundle (bundle env)")
    parser.add_argument("--work", default=None, help="folder to lay the zoo out in (default: a temporary one)")
    args = parser.parse_args(argv)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="zoo_ci_")
    work = Path(args.work or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    try:
        bundle = layout(Path(args.zoo), work)
        failed = []
        problems = text_file_problems(bundle)  # before prepare_schema / the unit test write into the bundle
        print(f"--- zoo-ci pre-commit text checks: {'FAILED' if problems else 'passed'}", *problems, sep="\n")
        if problems:
            failed.append("pre-commit text checks")
        for name, cmd in checks(work, bundle, args.python).items():
            if run_check(name, cmd, work, child_env()).returncode != 0:
                failed.append(name)
        if failed:
            print(f"zoo-ci: FAILED for models/{bundle.name}: {', '.join(failed)}")
            return 1
        print(f"zoo-ci: all checks passed for models/{bundle.name}")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
