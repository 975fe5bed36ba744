"""Services of an earlier release, built from the repository's own history.

A :class:`Release` is a source tree whose ``libs/`` and ``services/*/`` go first on the
services' ``PYTHONPATH``: the virtualenv (and its dependencies) is this tree's, but the
packages installed in it (editable, from this tree) are found after the earlier release's,
so ``python -m shoal.cli service NAME`` runs that release's code, its migrations and its
schemas (``codec.schemas_dir`` is relative to the code). ``Release.check`` proves it by
asking the interpreter, with the services' environment, where each package comes from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The release before this tree's: 0.1.0, the last before events and messages carried a
# schema version (this tree is 0.2.0). When a release is cut, this moves to its commit.
PREVIOUS_RELEASE = "328c9b8"

SOURCE_DIRS = ("libs", "services/api", "services/orchestrator", "services/worker",
               "services/projector", "services/scheduler")
PACKAGES = ("shoal", "shoal_api", "shoal_orchestrator", "shoal_worker", "shoal_projector",
            "shoal_scheduler")


@dataclass(frozen=True)
class Release:
    """An earlier release's source tree (``root``): ``name`` says which commit, ``label``
    is short (log file names)."""

    name: str
    label: str
    root: Path

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this release's sources first on the path, writing bytecode (into
        the release's temporary tree: what was compiled there shows which code ran)."""
        paths = [str(self.root / d) for d in SOURCE_DIRS]
        if base.get("PYTHONPATH"):
            paths.append(base["PYTHONPATH"])
        env = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "PYTHONPATH": os.pathsep.join(paths)}

    def check(self, base: dict[str, str]) -> dict[str, str]:
        """Where each package is imported from under :meth:`env` (and this tree's own
        interpreter, from the release's root as the services run); fails unless every one
        is this release's."""
        probe = ("import importlib, json, sys; print(json.dumps({p: importlib.import_module(p)"
                 f".__file__ for p in {PACKAGES!r}}}))")
        out = subprocess.run([sys.executable, "-c", probe], env=self.env(base), cwd=self.root,
                             capture_output=True, text=True, timeout=60, check=True)
        files: dict[str, str] = json.loads(out.stdout)
        wrong = {p: f for p, f in files.items() if not Path(f).is_relative_to(self.root)}
        assert not wrong, f"modules not from release {self.name} ({self.root}): {wrong}"
        return files


def repository_root() -> Path:
    """The git work tree holding these tests."""
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=Path(__file__).parent,
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"the tests are not in a git clone: {out.stderr.strip()}")
    return Path(out.stdout.strip())


@contextlib.contextmanager
def release_tree(commit: str = PREVIOUS_RELEASE) -> Iterator[Release]:
    """The tree of ``commit`` from this repository's history, in a temporary directory
    (``git archive``: nothing is added to the repository's worktrees or index), removed
    afterwards. Fails, naming the commit, when the clone does not hold it (a shallow
    clone: ``git fetch --unshallow``)."""
    repo = repository_root()

    def known() -> bool:
        return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo,
                              capture_output=True, timeout=30).returncode == 0

    if not known() and subprocess.run(
            ["git", "rev-parse", "--is-shallow-repository"], cwd=repo, capture_output=True,
            text=True, timeout=30).stdout.strip() == "true":
        subprocess.run(["git", "fetch", "--quiet", "--unshallow"], cwd=repo,
                       capture_output=True, timeout=300)
    if not known():
        raise AssertionError(
            f"release commit {commit} is not in the clone at {repo}; the upgrade tests build "
            "the previous release from the repository's history, so they need the full "
            "history (git fetch --unshallow)")
    full = subprocess.run(["git", "rev-parse", commit], cwd=repo, capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix=f"shoal-release-{commit}-"))
    try:
        archive = tmp / "tree.tar"
        with archive.open("wb") as f:
            subprocess.run(["git", "archive", "--format=tar", full], cwd=repo, stdout=f,
                           check=True, timeout=120)
        root = tmp / "tree"
        root.mkdir()
        subprocess.run(["tar", "-x", "-f", str(archive), "-C", str(root)], check=True,
                       timeout=120)
        archive.unlink()
        yield Release(f"{commit} ({full[:12]})", commit, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
