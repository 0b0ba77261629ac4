"""Tools of the controlled scheduler (the second engine; native/spf_sched.h, run/sched.py):
replaying a token, finding a schedule for a real-parallel failure, shrinking a token.
They drive runs (run/), so they sit above it, with the benchmarks."""
