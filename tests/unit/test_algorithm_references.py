"""Every personalized-FL algorithm against an independent reference written from its paper.

The references below are plain torch: one client at a time, float64, autograd gradients of the
mean cross-entropy of a model written out here (logistic regression, or the paper's CNN with
F.conv2d/F.linear), loops written from each paper's pseudo-code. They share nothing with the
production path (pfl_dist/algorithms/, the task's batched gradients, the Exchange) except the
data: each client's samples (pfl_dist.tasks.images.client_index_sets) and its shuffle order
(pfl_dist.solvers.padded.epoch_permutation). Two rounds on 3 clients must agree to 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import Config, load_config
from pfl_dist.data.images import load_images
from pfl_dist.exchange.base import generator as codec_generator
from pfl_dist.exchange.codecs import _RANDK_STREAM
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import sample_clients
from pfl_dist.solvers.padded import epoch_permutation
from pfl_dist.tasks.images import client_index_sets
from pfl_dist.train import Trainer, run_session
from tests.helpers import write_learnable_mnist

TOL = 1e-10
LR, PERSONAL_LR, LAM, BETA, ALPHA, INNER = 0.05, 0.03, 0.5, 0.7, 0.4, 3
BATCH, ROUNDS, CLIENTS = 32, 2, 3


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


def config(tmp_path: Path, mnist_dir: Path, method: str, *extra: str) -> Config:
    return load_config(None, [
        f"run.out_dir={tmp_path}", f"run.name={method}", "data.kind=mnist", f"data.data_dir={mnist_dir}",
        "data.num_partitions=30", f"data.num_clients={CLIENTS}", f"algorithm.name={method}",
        f"algorithm.batch_size={BATCH}", "algorithm.local_epochs=1", f"algorithm.local_lr={LR}",
        f"algorithm.personal_lr={PERSONAL_LR}", f"algorithm.lam={LAM}", f"algorithm.inner_steps={INNER}",
        f"algorithm.alpha={ALPHA}", f"train.num_rounds={ROUNDS}", "train.eval_every=1", "train.dtype=float64",
        *extra])


def run_production(cfg: Config) -> Trainer:
    return run_session(cfg, init_runtime(cfg), StopRequest())


# --- the reference: data, models, autograd gradients ------------------------------------------


@dataclass
class Client:
    client_id: int
    x: torch.Tensor  # (n, 784) or (n, 1, 28, 28), float64 pixels / 255
    y: torch.Tensor

    def batches(self, cfg: Config, round_idx: int, epochs: int, stream: int = 0) -> Iterator[torch.Tensor]:
        n = len(self.y)
        for epoch in range(epochs):
            order = epoch_permutation(n, seed=cfg.run.seed, round_idx=round_idx, client_id=self.client_id,
                                      epoch=epoch, stream=stream)
            for start in range(0, n, BATCH):
                yield torch.from_numpy(order[start: start + BATCH])


def clients(cfg: Config, *, cnn: bool) -> list[Client]:
    data = load_images("mnist", data_dir=cfg.data.data_dir)
    out = []
    for split in client_index_sets(cfg, data.train.labels, client_ids=range(CLIENTS)):
        x = torch.from_numpy(np.array(data.train.images[split.train])).double() / 255.0
        out.append(Client(split.client_id, x.reshape(-1, 1, 28, 28) if cnn else x.reshape(-1, 784),
                          torch.from_numpy(np.array(data.train.labels[split.train])).long()))
    return out


def logreg(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ w[:7840].view(784, 10) + w[7840:]


CNN_SHAPES = [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 3136), (128,), (10, 128), (10,)]


def cnn(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    parts, offset = [], 0
    for shape in CNN_SHAPES:
        size = int(np.prod(shape))
        parts.append(w[offset: offset + size].view(shape))
        offset += size
    c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b = parts
    h = F.max_pool2d(F.relu(F.conv2d(x, c1w, c1b, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, c2w, c2b, padding=1)), 2)
    return F.linear(F.relu(F.linear(h.flatten(1), f1w, f1b)), f2w, f2b)


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def grad(model: Model, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    leaf = w.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(leaf, x), y), leaf)
    return g


def weighted_mean(models: list[torch.Tensor], cs: list[Client]) -> torch.Tensor:
    n = [float(len(c.y)) for c in cs]
    return sum(ni * m for ni, m in zip(n, models, strict=True)) / sum(n)  # type: ignore[return-value]


def sgd(model: Model, w: torch.Tensor, c: Client, cfg: Config, round_idx: int, *, lr: float, epochs: int = 1,
        stream: int = 0) -> torch.Tensor:
    w = w.clone()
    for b in c.batches(cfg, round_idx, epochs, stream):
        w = w - lr * grad(model, w, c.x[b], c.y[b])
    return w


# --- the algorithms, from the papers ------------------------------------------------------------


def ref_ditto(cfg: Config, cs: list[Client], w0: torch.Tensor) -> dict[str, Any]:
    """Li et al. 2021, Algorithm 1: w_k by the global solver (FedAvg), v_k by SGD on
    F_k(v) + lam/2 ||v - w^t||^2; server averages the w_k."""
    w, v = w0.clone(), [w0.clone() for _ in cs]
    for t in range(ROUNDS):
        sent = [sgd(logreg, w, c, cfg, t, lr=LR) for c in cs]
        for k, c in enumerate(cs):
            for b in c.batches(cfg, t, 1, stream=1):
                v[k] = v[k] - PERSONAL_LR * (grad(logreg, v[k], c.x[b], c.y[b]) + LAM * (v[k] - w))
        w = weighted_mean(sent, cs)
    return {"global": w, "personal_models": torch.stack(v)}


def ref_pfedme(cfg: Config, cs: list[Client], w0: torch.Tensor, *, warm_start: bool = False) -> dict[str, Any]:
    """Dinh et al. 2020, Algorithm 1, started as the authors' code starts it: every round sets both
    w_i and theta to w; per batch, theta ~ argmin f(theta; b) + lam/2 ||theta - w_i||^2 by K gradient
    steps, then w_i <- w_i - eta lam (w_i - theta); w <- (1-beta) w + beta mean w_i. warm_start
    (algorithm.inner_warm_start): each round's theta starts from the client's previous theta."""
    w, theta = w0.clone(), [w0.clone() for _ in cs]
    for t in range(ROUNDS):
        sent = []
        for k, c in enumerate(cs):
            local = w.clone()
            if not warm_start:
                theta[k] = w.clone()
            for b in c.batches(cfg, t, 1):
                for _ in range(INNER):
                    g = grad(logreg, theta[k], c.x[b], c.y[b])
                    theta[k] = theta[k] - PERSONAL_LR * (g + LAM * (theta[k] - local))
                local = local - LR * LAM * (local - theta[k])
            sent.append(local)
        w = (1 - BETA) * w + BETA * weighted_mean(sent, cs)
    return {"global": w, "personal_models": torch.stack(theta)}


def test_pfedme_warm_start_option_equals_its_reference(tmp_path: Path, mnist_dir: Path) -> None:
    # Prepare
    cfg = config(tmp_path, mnist_dir, "pfedme", f"algorithm.beta={BETA}", "algorithm.inner_warm_start=true")
    # Execute
    trainer = run_production(cfg)
    cs, w0 = clients(cfg, cnn=False), trainer.task.init_model()
    expected, authors = ref_pfedme(cfg, cs, w0, warm_start=True), ref_pfedme(cfg, cs, w0)
    # Assert: the option is its own rule, and not the default's
    assert (trainer.global_model - expected["global"]).abs().max() <= TOL
    assert (trainer.client_state["personal_models"] - expected["personal_models"]).abs().max() <= TOL
    assert (expected["global"] - authors["global"]).abs().max() > 1e-6


def ref_apfl(cfg: Config, cs: list[Client], w0: torch.Tensor) -> dict[str, Any]:
    """Deng et al. 2020, Algorithm 1: w_i by SGD; v_i and alpha_i by SGD on f(alpha v + (1-alpha) w)
    (autograd w.r.t. v and alpha), alpha clipped to [0, 1]."""
    w, v, a = w0.clone(), [w0.clone() for _ in cs], [torch.tensor(ALPHA, dtype=torch.float64) for _ in cs]
    for t in range(ROUNDS):
        sent = []
        for k, c in enumerate(cs):
            local = w.clone()
            for b in c.batches(cfg, t, 1):
                vk, ak = v[k].clone().requires_grad_(True), a[k].clone().requires_grad_(True)
                loss = F.cross_entropy(logreg(ak * vk + (1 - ak) * local, c.x[b]), c.y[b])
                gv, ga = torch.autograd.grad(loss, (vk, ak))
                new_local = local - LR * grad(logreg, local, c.x[b], c.y[b])
                v[k] = v[k] - PERSONAL_LR * gv
                a[k] = (a[k] - PERSONAL_LR * ga).clamp(0, 1)
                local = new_local
            sent.append(local)
        w = weighted_mean(sent, cs)
    return {"global": w, "personal_models": torch.stack(v), "alpha": torch.stack(a).unsqueeze(1),
            "evaluated": torch.stack([ak * vk + (1 - ak) * w for ak, vk in zip(a, v, strict=True)])}


def ref_perfedavg(cfg: Config, cs: list[Client], w0: torch.Tensor) -> dict[str, Any]:
    """Fallah et al. 2020, Algorithm 1 (first order): temp = w - alpha grad f(w; D),
    w <- w - beta grad f(temp; D'); personalized: w - alpha grad f(w; all of D_i)."""
    w = w0.clone()
    for t in range(ROUNDS):
        sent = []
        for c in cs:
            local = w.clone()
            for b, b2 in zip(c.batches(cfg, t, 1), c.batches(cfg, t, 1, stream=2), strict=True):
                temp = local - PERSONAL_LR * grad(logreg, local, c.x[b], c.y[b])
                local = local - LR * grad(logreg, temp, c.x[b2], c.y[b2])
            sent.append(local)
        w = weighted_mean(sent, cs)
    evaluated = torch.stack([w - PERSONAL_LR * grad(logreg, w, c.x, c.y) for c in cs])
    return {"global": w, "evaluated": evaluated}


def ref_fedavg_ft(cfg: Config, cs: list[Client], w0: torch.Tensor) -> dict[str, Any]:
    """FedAvg, then at evaluation E epochs of fine-tuning SGD from w_g on each client."""
    w = w0.clone()
    for t in range(ROUNDS):
        w = weighted_mean([sgd(logreg, w, c, cfg, t, lr=LR) for c in cs], cs)
    evaluated = torch.stack([sgd(logreg, w, c, cfg, ROUNDS, lr=PERSONAL_LR, stream=3) for c in cs])
    return {"global": w, "evaluated": evaluated}


def ref_scaffold(cfg: Config, cs: list[Client], w0: torch.Tensor, *, weights: str = "uniform") -> dict[str, Any]:
    """Karimireddy et al. 2020, Algorithm 1, option II: y <- y - eta (g(y) - c_i + c);
    c_i+ = c_i - c + (x - y)/(K eta); x <- x + eta_g/|S| sum (y - x); c <- c + 1/N sum (c_i+ - c_i)
    (all 3 clients sampled: |S| = N = 3). weights='samples' (algorithm.client_weights): both sums
    weighted by n_i / sum n instead of 1/3."""
    def mean(values: list[torch.Tensor]) -> torch.Tensor:
        return sum(values) / len(values) if weights == "uniform" else weighted_mean(values, cs)  # type: ignore[return-value]

    x, c = w0.clone(), torch.zeros_like(w0)
    ci = [torch.zeros_like(w0) for _ in cs]
    for t in range(ROUNDS):
        dys, dcs = [], []
        for k, cl in enumerate(cs):
            y, steps = x.clone(), 0
            for b in cl.batches(cfg, t, 1):
                y = y - LR * (grad(logreg, y, cl.x[b], cl.y[b]) - ci[k] + c)
                steps += 1
            new = ci[k] - c + (x - y) / (steps * LR)
            dys.append(y - x)
            dcs.append(new - ci[k])
            ci[k] = new
        x = x + BETA * mean(dys)
        c = c + mean(dcs)
    return {"global": x, "control_variates": torch.stack(ci), "control": c}


# Dirichlet client sizes (132, 68, 75 training images): the weighting of the server's means matters.
SCAFFOLD_RAGGED = (f"algorithm.beta={BETA}", "data.partition=dirichlet")


def test_scaffold_sample_weights_option_equals_its_reference(tmp_path: Path, mnist_dir: Path) -> None:
    # Prepare
    cfg = config(tmp_path, mnist_dir, "scaffold", *SCAFFOLD_RAGGED, "algorithm.client_weights=samples")
    # Execute
    trainer = run_production(cfg)
    cs, w0 = clients(cfg, cnn=False), trainer.task.init_model()
    expected, paper = ref_scaffold(cfg, cs, w0, weights="samples"), ref_scaffold(cfg, cs, w0)
    # Assert: the option is its own rule, and on ragged clients not the paper's
    assert len({len(c.y) for c in cs}) == 3
    assert (trainer.global_model - expected["global"]).abs().max() <= TOL
    assert (trainer.algorithm.state_dict()["control"] - expected["control"]).abs().max() <= TOL
    assert (trainer.client_state["control_variates"] - expected["control_variates"]).abs().max() <= TOL
    assert (expected["global"] - paper["global"]).abs().max() > 1e-3
    assert trainer.summary["algorithm"]["client_weights"] == "samples"


def test_uniform_client_weights_give_fedavg_the_plain_mean(tmp_path: Path, mnist_dir: Path) -> None:
    # Prepare: algorithm.client_weights is any method's option; FedAvg's paper weighs by n_i
    cfg = config(tmp_path, mnist_dir, "fedavg", "data.partition=dirichlet", "algorithm.client_weights=uniform")
    # Execute
    trainer = run_production(cfg)
    cs, w = clients(cfg, cnn=False), trainer.task.init_model()
    for t in range(ROUNDS):
        w = sum(sgd(logreg, w, c, cfg, t, lr=LR) for c in cs) / len(cs)  # type: ignore[assignment]
    # Assert
    assert (trainer.global_model - w).abs().max() <= TOL


def ref_fedrep(cfg: Config, cs: list[Client], w0: torch.Tensor, *, joint: bool) -> dict[str, Any]:
    """FedRep (Collins et al. 2021, Algorithm 1): head epochs with the body fixed, then body epochs
    with the head fixed; FedPer (joint=True): body and head trained together. Only bodies averaged."""
    head = slice(len(w0) - 1290, len(w0))
    body = slice(0, len(w0) - 1290)
    w, heads = w0.clone(), [w0[head].clone() for _ in cs]
    for t in range(ROUNDS):
        bodies = []
        for k, c in enumerate(cs):
            m = torch.cat([w[body], heads[k]])
            if joint:
                m = sgd(cnn, m, c, cfg, t, lr=LR)
            else:
                for b in c.batches(cfg, t, 1, stream=1):
                    g = grad(cnn, m, c.x[b], c.y[b])
                    m = torch.cat([m[body], m[head] - PERSONAL_LR * g[head]])
                for b in c.batches(cfg, t, 1):
                    g = grad(cnn, m, c.x[b], c.y[b])
                    m = torch.cat([m[body] - LR * g[body], m[head]])
            heads[k] = m[head]
            bodies.append(m[body])
        w = torch.cat([weighted_mean(bodies, cs), w[head]])
    return {"global": w, "evaluated": torch.stack([torch.cat([w[body], h]) for h in heads])}


REFERENCES: dict[str, tuple[Callable[..., dict[str, Any]], tuple[str, ...]]] = {
    "ditto": (ref_ditto, ()),
    "pfedme": (ref_pfedme, (f"algorithm.beta={BETA}",)),
    "apfl": (ref_apfl, ()),
    "perfedavg": (ref_perfedavg, ()),
    "fedavg_ft": (ref_fedavg_ft, ()),
    "scaffold": (ref_scaffold, SCAFFOLD_RAGGED),
    "fedrep": (lambda cfg, cs, w0: ref_fedrep(cfg, cs, w0, joint=False), ("model.kind=cnn",)),
    "fedper": (lambda cfg, cs, w0: ref_fedrep(cfg, cs, w0, joint=True), ("model.kind=cnn",)),
}
CNN_METHODS = ("fedrep", "fedper")  # the float64 CNN: ~1-3 min each on a loaded 2-core box


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in CNN_METHODS else m
                                    for m in sorted(REFERENCES)])
def test_two_rounds_on_three_clients_equal_the_papers_reference(tmp_path: Path, mnist_dir: Path,
                                                                method: str) -> None:
    # Prepare
    reference, extra = REFERENCES[method]
    cfg = config(tmp_path, mnist_dir, method, *extra)
    # Execute
    trainer = run_production(cfg)
    expected = reference(cfg, clients(cfg, cnn=cfg.model.kind == "cnn"), trainer.task.init_model())
    # Assert: w_g, every per-client state the reference tracks, and the evaluated personal models.
    assert (trainer.global_model - expected.pop("global")).abs().max() <= TOL
    evaluated = expected.pop("evaluated", None)
    if evaluated is not None:
        assert (trainer.local_models - evaluated).abs().max() <= TOL
    control = expected.pop("control", None)
    if control is not None:
        assert (trainer.algorithm.state_dict()["control"] - control).abs().max() <= TOL
    for name, value in expected.items():
        assert (trainer.client_state[name] - value).abs().max() <= TOL, name
    assert trainer.summary["method"]["name"] == method


# --- FedCLUP through a compressing codec: the error feedback of kept state ----------------------

CODED_ROUNDS, CODED_FRACTION, CODED_GLOBAL_LR = 4, 0.6, 1.5  # 2 of the 3 clients per round


def rand_k(delta: torch.Tensor, cfg: Config, round_idx: int, fraction: float) -> torch.Tensor:
    """Rand-k: delta at k = fraction x P coordinates drawn from (seed, round), the same for every
    client (the draw is shared randomness, like the shuffle order); zero elsewhere."""
    k = round(fraction * len(delta))
    chosen = torch.randperm(len(delta), generator=codec_generator(cfg.run.seed, _RANDK_STREAM, round_idx))[:k]
    out = torch.zeros_like(delta)
    out[chosen] = delta[chosen]
    return out


def top_k_of(delta: torch.Tensor, cfg: Config, round_idx: int, fraction: float) -> torch.Tensor:
    """Top-k: delta at its k = fraction x P largest |delta_j|; zero elsewhere."""
    out = torch.zeros_like(delta)
    largest = delta.abs().argsort(descending=True)[: round(fraction * len(delta))]
    out[largest] = delta[largest]
    return out


def ref_fedclup_coded(cfg: Config, cs: list[Client], w0: torch.Tensor,
                      compress: Callable[[torch.Tensor, Config, int], torch.Tensor]) -> dict[str, Any]:
    """FedCLUP (Yu et al., ICML 2025) with compressed messages. Each sampled client i of S_t
    trains its own w_i, kept across rounds: per batch w_i <- w_i - eta (grad f_i(w_i; b) + lam (w_i
    - w_g)); it sends C(w_i - w_g). Server: avg = w_g + sum_S n_i C(w_i - w_g) / sum_S n_i,
    w_g <- w_g - gamma lam (w_g - avg). No residual: what C leaves out of w_i - w_g is still in
    w_i - w_g next round, so w_i is its own memory (with a residual it would be sent twice)."""
    w, local = w0.clone(), [w0.clone() for _ in cs]
    for t in range(CODED_ROUNDS):
        sampled = sample_clients(t, seed=cfg.run.seed, num_clients=CLIENTS, sample_fraction=CODED_FRACTION)
        sent = []
        for k in sampled:
            c = cs[k]
            for b in c.batches(cfg, t, 1):
                local[k] = local[k] - LR * (grad(logreg, local[k], c.x[b], c.y[b]) + LAM * (local[k] - w))
            sent.append(w + compress(local[k] - w, cfg, t))
        average = weighted_mean(sent, [cs[k] for k in sampled])
        w = w - CODED_GLOBAL_LR * LAM * (w - average)
    return {"global": w, "local_models": torch.stack(local)}


CODED = {"randk:0.2": lambda delta, cfg, t: rand_k(delta, cfg, t, 0.2),
         "topk:0.02": lambda delta, cfg, t: top_k_of(delta, cfg, t, 0.02)}


@pytest.mark.parametrize("codec", sorted(CODED))
def test_fedclup_through_an_error_feedback_codec_equals_the_reference_without_a_residual(
        tmp_path: Path, mnist_dir: Path, codec: str) -> None:
    # Prepare
    cfg = config(tmp_path, mnist_dir, "fedclup", f"comm.codec={codec}", f"train.num_rounds={CODED_ROUNDS}",
                 f"algorithm.sample_fraction={CODED_FRACTION}", f"algorithm.global_lr={CODED_GLOBAL_LR}")
    # Execute
    trainer = run_production(cfg)
    expected = ref_fedclup_coded(cfg, clients(cfg, cnn=False), trainer.task.init_model(), CODED[codec])
    # Assert: w_g and every client's kept w_i (the client that sat a round out kept its own)
    assert (trainer.global_model - expected["global"]).abs().max() <= TOL
    assert (trainer.client_state["local_models"] - expected["local_models"]).abs().max() <= TOL
    assert trainer.exchange.client_state() == {}
