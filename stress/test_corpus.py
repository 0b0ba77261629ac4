"""Replay the corpus: seeds and configurations that once failed, or that cover tricky
paths.  Each entry is JSON: {"config": {...}, "expect": "clean" | "<signature>",
"note": "..."}.  Listed first in testpaths, so CI replays it before anything else."""
import dataclasses
import glob
import json
import os

import pytest

from spfshm.config import Config
from spfshm.run.replay import signature_of
from spfshm.run.runner import run_stress

CORPUS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "corpus", "*.json")))


@pytest.mark.parametrize("path", CORPUS, ids=[os.path.basename(p) for p in CORPUS])
def test_corpus_entry(path, tmp_path):
    with open(path) as f:
        entry = json.load(f)
    cfg = Config.from_dict(entry["config"])
    rep = run_stress(dataclasses.replace(cfg, artifacts=str(tmp_path)).resolved())
    if entry["expect"] == "clean":
        assert rep["exit_code"] == 0, "%s: %s %s (%s)" % (
            os.path.basename(path), signature_of(rep), rep["errors"], entry["note"])
    else:
        assert signature_of(rep) == entry["expect"], entry["note"]
