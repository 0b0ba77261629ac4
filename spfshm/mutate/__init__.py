"""Mutation testing of the protocol code (``spfshm mutate``, issue #13 section 4): how much
of a wrong protocol does a campaign catch?

Each mutant is one of the mistakes this field makes (a deleted re-check, flush, grace
period, lock or section; a release moved up; a trylock that takes nothing; two steps
swapped; a C memory order weakened to relaxed), applied to a private copy of the package,
never through ``bugs.on``; then a campaign runs on the copy and must fail.

Why a small transformer of our own and not mutmut or cosmic-ray: those mutate operators
and constants (``<`` to ``<=``, ``True`` to ``False``) across a module and judge by a test
suite's exit code.  Neither can delete a lock pair or a flush by name, move one statement
past its neighbour inside a chosen function, or rebuild a C extension per mutant; and
their mutants are mostly not protocol mistakes.  Here mutants are located with ``ast``
and applied to whole source lines, so each is a readable patch with its comments.

  operators.py     the operators, the mutants and their stable ids
  harness.py       campaign spec, private copies, one mutant's run, the report, ``main``
  mutant_tests.py  the mutants as a pytest parametrization (pytest-xdist runs them)
  child.py         the campaign, inside a mutant's copy
"""
