"""Federated datasets: synthetic (the paper's generator) and images (IDX files)."""
