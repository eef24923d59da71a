"""`python -m pfl_dist.sweep SWEEP.yaml`: see pfl_dist.sweep.cli.

The interpreter is checked before the driver's imports (PyYAML among them): started with a
Python that lacks pfl_dist's dependencies, the sweep says in one line which one to use.
"""

import sys

from pfl_dist.interpreter import interpreter_problem

if __name__ == "__main__":
    problem = interpreter_problem("pfl_dist.sweep")
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    from pfl_dist.sweep.cli import cli

    cli()
