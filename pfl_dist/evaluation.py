"""The evaluation's one all-reduce, and what an evaluation on a cohort of clients reports.

One owner for the reduction (`EvalReduction`): every component adds its named float64 blocks,
each rank's contribution to a sum over ranks (the task's metric sums, the per-client blocks
below, the round timings of pfl_dist/timing.py, the stop and byte counters), the buffer is
reduced once as telemetry, and each component takes its reduced blocks back by name. The blocks
are concatenated in name order, so every rank lays the buffer out the same way.

Per-client metrics. A task returns, beside its sums, `client/<metric>` pairs (2, r): the
numerator u_i and denominator v_i of each client's value of a metric it reports as
sum u / sum v (acc_personal: correct predictions and samples; ITR: the client's error and 1).
- Evaluating every client (`train.eval_clients: all`), only acc_personal's pair travels, as two
  vectors of m numbers (each client's value in its place), for the distribution over clients
  (mean, 10th percentile, std): today's exact numbers.
- On a cohort (N clients, pfl_dist/sampling.py `eval_cohort`) nothing per client crosses the
  wire: each pair becomes its six streaming sums (`ratio_moments`: N, sum u, sum v, sum u^2,
  sum v^2, sum uv), a fixed-size block whatever N and the world size, and the metric gets its
  standard error (`ratio_standard_error`); the distribution over clients is the cohort's mean and
  std from (count, sum a, sum a^2) of the per-client accuracies a_i = u_i / v_i, and its 10th
  percentile from their histogram (HISTOGRAM_BINS bins: to within 0.001).
"""

from __future__ import annotations

import math

import torch

from pfl_dist.comm import Communicator, Traffic
from pfl_dist.outputs import SE_SUFFIX  # acc_personal -> acc_personal_se

CLIENT_PREFIX = "client/"  # a task's per-client pair of a metric: (2, r) numerators, denominators
PERSONAL_KEY = "acc_personal"  # the metric whose per-client values give the distribution over clients
COHORT_PREFIX = "cohort/"  # a metric's six streaming sums over the cohort (`ratio_moments`)
COHORT_DISTRIBUTION = "cohort_distribution"  # the cohort's (count, sum a, sum a^2, histogram) of a_i = acc_personal_i
HISTOGRAM_BINS = 1000  # the cohort's 10th percentile of acc_personal to within 0.001


class EvalReduction:
    """The evaluation's one telemetry all-reduce (a sum over ranks) of named float64 blocks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.blocks: dict[str, torch.Tensor] = {}

    def add(self, name: str, block: torch.Tensor) -> None:
        """This rank's contribution to block `name` (the same shape on every rank)."""
        if name in self.blocks:
            raise ValueError(f"evaluation block {name!r} added twice")
        self.blocks[name] = block

    def reduce(self, comm: Communicator) -> dict[str, torch.Tensor]:
        """Every block summed over ranks (on the CPU), in one all-reduce."""
        names = sorted(self.blocks)
        flat = torch.cat([self.blocks[k].reshape(-1).double().to(self.device) for k in names])
        comm.all_reduce(flat, traffic=Traffic.TELEMETRY)
        reduced, offset = {}, 0
        for name in names:
            size = self.blocks[name].numel()
            reduced[name] = flat[offset: offset + size].reshape(self.blocks[name].shape).cpu()
            offset += size
        return reduced


def ratio_moments(pair: torch.Tensor) -> torch.Tensor:
    """(6,) float64 [N, sum u, sum v, sum u^2, sum v^2, sum uv] of a (2, r) per-client pair:
    additive over ranks, and all a ratio's standard error needs."""
    u, v = pair.double()
    return torch.stack([torch.tensor(float(u.numel()), dtype=torch.float64, device=u.device), u.sum(), v.sum(),
                        (u * u).sum(), (v * v).sum(), (u * v).sum()]).cpu()


def ratio_standard_error(moments: torch.Tensor, *, population: int) -> float:
    """The standard error of R = sum u / sum v over a cohort of N clients drawn uniformly without
    replacement from `population` clients (the linearized variance of a ratio estimator, Cochran,
    Sampling Techniques, 1977, 6.3):

        SE = sqrt((1 - N/m) s_e^2 / N) / vbar,   s_e^2 = sum_i (u_i - R v_i)^2 / (N - 1),   vbar = sum v / N.

    When every client has the same v (the same number of evaluation samples; ITR, v = 1) this is
    the per-client metric's sample standard deviation / sqrt(N), times the finite-population
    correction sqrt(1 - N/m)."""
    count, su, sv, suu, svv, suv = (float(x) for x in moments)
    if count < 2 or sv == 0:  # no spread to measure (train.eval_clients >= 2) or no samples
        return math.nan
    ratio = su / sv
    residual = max(0.0, suu - 2 * ratio * suv + ratio * ratio * svv)  # sum (u_i - R v_i)^2
    mean_v = sv / count
    return math.sqrt(max(0.0, 1 - count / population) * residual / (count - 1) / count) / mean_v


def accuracy_moments(pair: torch.Tensor) -> torch.Tensor:
    """(3 + HISTOGRAM_BINS,) float64 [count, sum a, sum a^2, histogram] of the per-client
    accuracies a_i = u_i / v_i of the clients with evaluation samples (v_i > 0); bin b holds
    a in [b, b + 1) / HISTOGRAM_BINS (a = 1 in the last)."""
    u, v = pair.double().cpu()
    has = v > 0
    acc = u[has] / v[has]
    bins = (acc * HISTOGRAM_BINS).floor().long().clamp(0, HISTOGRAM_BINS - 1)
    sums = torch.stack([torch.tensor(float(acc.numel()), dtype=torch.float64), acc.sum(), (acc * acc).sum()])
    return torch.cat([sums, torch.bincount(bins, minlength=HISTOGRAM_BINS).double()])


def cohort_distribution(block: torch.Tensor) -> dict[str, float]:
    """The cohort's per-client accuracy, as train.accuracy_distribution defines it for every
    client: mean (unweighted), population standard deviation (exact, from the sums), and the 10th
    percentile (linear interpolation between order statistics) from the histogram, to within
    1 / HISTOGRAM_BINS; empty when no cohort client has samples."""
    count, total, squares = (float(x) for x in block[:3])
    if count == 0:
        return {}
    mean = total / count
    return {"acc_personal_mean": mean, "acc_personal_p10": histogram_quantile(block[3:].tolist(), 0.1),
            "acc_personal_std": math.sqrt(max(0.0, squares / count - mean * mean))}


def histogram_quantile(histogram: list[float], q: float) -> float:
    """The q-quantile (linear interpolation between the order statistics at q (n - 1), as
    numpy's and torch's default) of the values counted in `histogram` (equal bins on [0, 1]),
    each order statistic placed as if its bin's values were spread evenly across it: within one
    bin width of the exact quantile."""
    total = round(sum(histogram))
    position = q * (total - 1)
    low = math.floor(position)
    high = min(low + 1, total - 1)

    def order_statistic(index: int) -> float:
        before = 0
        for b, count in enumerate(histogram):
            if index < before + count:
                return (b + (index - before + 0.5) / count) / len(histogram)
            before += round(count)
        raise ValueError(f"order statistic {index} of {total} values")

    fraction = position - low
    return (1 - fraction) * order_statistic(low) + fraction * order_statistic(high)


def with_standard_errors(metrics: dict[str, float], errors: dict[str, float]) -> dict[str, float]:
    """`metrics` with each one's standard error, when it has one, right after it (acc_personal,
    acc_personal_se, ...): the order of metrics.jsonl, summary.json and the progress line."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        out[name] = value
        if name in errors:
            out[f"{name}{SE_SUFFIX}"] = errors[name]
    return out
