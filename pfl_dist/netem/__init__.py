"""Run a config over an emulated network: one network namespace per node on one machine, links
shaped with tc (`python -m pfl_dist.netem --nodes 4 --rate 10mbit --config X.yaml ...`).

- namespaces.py: the namespaces, bridge and veths, processes in them, clean-up and leftovers;
- state.py:      state files naming each cluster's owner and namespaces (SIGKILL leftovers);
- shaping.py:    rates (tbf/htb), delay/loss (netem where the kernel has it), per-node overrides;
- compose.py:    a compose file's service commands run in the namespaces (no docker);
- model.py:      the model of communication time the tool prints next to the measured one;
- cli.py:        the command line tool.
"""
