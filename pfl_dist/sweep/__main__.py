"""`python -m pfl_dist.sweep SWEEP.yaml`: see pfl_dist.sweep.cli."""

from pfl_dist.sweep.cli import cli

if __name__ == "__main__":
    cli()
