"""`python -m pfl_dist.plot RESULTS_DIR ...`: the figures of a sweep (pfl_dist.sweep.plot)."""

from pfl_dist.sweep.plot import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
