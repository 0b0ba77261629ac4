"""Packaging: the sdist carries every subpackage, the C core the extension is built from,
and the test suite (a non-editable install once had no ``spfshm.run``).  The quick guard;
.ci/run builds the sdist and a wheel from it, installs the wheel in a second virtualenv
and runs ``spfshm`` outside the source tree."""
import glob
import os
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_files(*patterns):
    """Files of the source tree matching glob patterns, relative to its root."""
    return {os.path.relpath(p, ROOT) for pat in patterns
            for p in glob.glob(os.path.join(ROOT, pat), recursive=True)}


def test_sdist_carries_every_package_native_and_the_suite(tmp_path):
    # Built from a copy, so the build's egg-info does not land in the work tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "__pycache__", "build", "dist", "*.so",
        "spfshm-artifacts"))
    r = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                        "print(b.build_sdist(%r))" % str(tmp_path)], cwd=src,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    name = r.stdout.split()[-1]
    with tarfile.open(tmp_path / name) as tar:
        top = name[:-len(".tar.gz")]
        shipped = {os.path.relpath(m, top) for m in tar.getnames()}
    want = tree_files("spfshm/**/*.py", "native/*.[ch]", "tests/*.py", "stress/*.py",
                      "stress/corpus/*.json", "stress/scenarios/*.litmus") \
        | {"pyproject.toml", "setup.py", "README.md"}
    assert {"spfshm/run/runner.py", "spfshm/mm/fault.py", "native/spf_rcu.h"} <= want
    assert want - shipped == set()
