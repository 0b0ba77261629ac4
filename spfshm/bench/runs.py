"""The benchmarks' one way to run: a run that a SIGINT or SIGTERM interrupted ends the
benchmark too (the runner's handler stops only the run it was given)."""
from ..run.runner import run_stress


def run(cfg, via=run_stress):
    """via(cfg) (run_stress, or a pool's run); KeyboardInterrupt when the run was
    interrupted."""
    rep = via(cfg)
    if rep.get("interrupted"):
        raise KeyboardInterrupt
    return rep
