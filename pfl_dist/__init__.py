"""pfl_dist: distributed personalized federated learning (FedCLUP) on torchrun."""

__version__ = "0.1.0"
