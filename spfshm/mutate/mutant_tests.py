"""The mutants of a ``spfshm mutate`` run as pytest tests (one per mutant, from the
manifest named by SPFSHM_MUTATE_MANIFEST), so pytest-xdist spreads them over cores;
each test writes its result as soon as its mutant ends, and fails unless it was killed."""
import json
import os

import pytest

from .. import native
from .harness import run_mutant

_MANIFEST = os.environ.get("SPFSHM_MUTATE_MANIFEST")
RUN = json.load(open(_MANIFEST)) if _MANIFEST else {"mutants": []}
if _MANIFEST:                  # an xdist worker of spfshm mutate: die with its pytest
    native.die_with_parent()


@pytest.mark.parametrize("mutant", RUN["mutants"], ids=[m["id"] for m in RUN["mutants"]])
def test_mutant(mutant):
    r = run_mutant(RUN, mutant)
    assert r["outcome"] == "killed", "%s %s:%d (%s): %s\n%s" % (
        r["outcome"], r["file"], r["line"], r["operator"], r["detail"], r["diff"])
