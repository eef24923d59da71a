"""Aggregation math, without any process group (Prepare / Execute / Assert)."""

from __future__ import annotations

import torch

from pfl_dist.aggregate import envelope_step, pack_weighted_sum, weighted_average
from pfl_dist.comm import ring_all_reduce_wire_bytes


def test_weighted_average_of_packed_buffers_from_several_ranks() -> None:
    # Prepare: 3 clients split over 2 "ranks"
    models = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    # Execute: each rank packs its share, the all-reduce sums the buffers
    reduced = pack_weighted_sum(models[:2], weights[:2], num_params=2) + pack_weighted_sum(
        models[2:], weights[2:], num_params=2)
    # Assert
    assert torch.allclose(weighted_average(reduced), torch.tensor([3.0, 4.5], dtype=torch.float64))
    assert reduced[-1] == 4.0


def test_rank_without_sampled_clients_contributes_zeros() -> None:
    empty = pack_weighted_sum(torch.zeros(0, 3), torch.zeros(0), num_params=3)
    assert torch.equal(empty, torch.zeros(4))


def test_envelope_step_interpolates_and_extrapolates() -> None:
    w_g, avg = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    assert torch.equal(envelope_step(w_g, avg, step_factor=1.0), avg)  # gamma = 1/lam: plain averaging
    assert torch.allclose(envelope_step(w_g, avg, step_factor=0.5), torch.tensor([0.5, 1.0]))
    assert torch.allclose(envelope_step(w_g, avg, step_factor=1.5), torch.tensor([1.5, -1.0]))


def test_ring_all_reduce_formula() -> None:
    assert ring_all_reduce_wire_bytes(1000, 1) == 0
    assert ring_all_reduce_wire_bytes(1000, 2) == 1000
    assert ring_all_reduce_wire_bytes(1000, 4) == 1500
