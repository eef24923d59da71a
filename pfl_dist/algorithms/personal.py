"""Personalized FL with a full global model: Ditto, pFedMe, APFL, Per-FedAvg (first order), FedAvg-FT.

Each class's docstring states the update rule as implemented, with its paper. Notation: w_g the
global model, n_i client i's sample count, eta = algorithm.local_lr, eta_p = algorithm.personal_lr
(auto: a stable step for the method's own personal objective, stated in its docstring; eta where
that objective is f_i alone), "a step on batch b" = one step of the task's local schedule
(`Task.batches`: E epochs of minibatches, or K full-batch steps). The server's mean is the
n_i-weighted mean over the round's sampled clients, computed by the Exchange
(`algorithm.client_weights: uniform` makes it the plain mean).
"""

from __future__ import annotations

from typing import Any

import torch

from pfl_dist.algorithms.base import Algorithm, ClientOutput, ClientRound, ClientState, local_sgd, prox_step
from pfl_dist.methods import MethodInfo
from pfl_dist.store import Row
from pfl_dist.tasks.base import Task

PERSONAL_STREAM = 1  # shuffles of a second solve in the same round (Ditto's personal model, ...)
SECOND_BATCH_STREAM = 2  # Per-FedAvg's second batch D'
FINETUNE_STREAM = 3  # FedAvg-FT's fine-tuning at evaluation


def _reset(ctx: ClientRound) -> torch.Tensor:
    return ctx.global_model.expand(len(ctx.rows), -1).clone()


class Ditto(Algorithm):
    """Ditto (Li, Hu, Beirami, Smith, ICML 2021), Algorithm 1 with the FedAvg global solver:

        global copy:    w_i <- local SGD from w_g on f_i                       (sent)
        personal model: v_i <- v_i - eta_p (grad f_i(v_i; b) + lam (v_i - w_g))
                        for algorithm.personal_epochs epochs                   (kept)
        server:         w_g <- sum_i n_i w_i / sum_i n_i

    The personal solve is anchored at the w_g the round started from. Per-client state: v_i.
    eta_p auto is 1/(L + lam) with L = 1/eta (the L of algorithm.smoothness under local_lr auto):
    the personal objective f_i + (lam/2)||v - w_g||^2 is (L + lam)-smooth, so the step stays stable
    at any lambda (1/L alone diverges once lam > L)."""

    # issue 21: personal_lr auto is 1/(L + lam) (was local_lr), added with client_weights
    info = MethodInfo("ditto", "Ditto", uses_lam=True, reads=("algorithm.personal_lr", "algorithm.personal_epochs"),
                      paper="Li et al., ICML 2021", colors="#ff7f00", marker="P",  # orange
                      results_changed_with="algorithm.client_weights")

    @property
    def prox_weight(self) -> float:
        return 0.0  # the sent global copy is plain FedAvg; lam enters the personal solve

    def default_personal_lr(self) -> float:
        """1/(1/eta + lam): an explicit local_lr stands for 1/L (the CNN has no computed L)."""
        return 1.0 / (1.0 / self.local_lr + self.lam)

    def client_rows(self) -> tuple[Row, ...]:
        return (Row("personal_models", "global"),)

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        task = ctx.task
        sent = local_sgd(task, _reset(ctx), ctx.rows, round_idx=ctx.round_idx, lr=self.local_lr)
        personal = local_sgd(task, state["personal_models"].clone(), ctx.rows, round_idx=ctx.round_idx,
                             lr=self.personal_lr, anchor=ctx.global_model, lam=self.lam,
                             epochs=self.cfg.personal_epochs, stream=PERSONAL_STREAM)
        return ClientOutput(sent=sent, keep={"personal_models": personal})

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        return state["personal_models"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "personal_lr": self.personal_lr}


class PFedMe(Algorithm):
    """pFedMe (Dinh, Tran, Nguyen, NeurIPS 2020), Algorithm 1: personalization by Moreau envelopes.

    A sampled client sets its local model w_i <- w_g and its personalized model theta_i <- w_g,
    then for every step on batch b:

        theta_i <- argmin_theta f_i(theta; b) + (lam/2) ||theta - w_i||^2,
                   approximately: algorithm.inner_steps steps of
                   theta_i <- theta_i - eta_p (grad f_i(theta_i; b) + lam (theta_i - w_i))
        w_i     <- w_i - eta lam (w_i - theta_i)

    and sends w_i. Server: w_g <- (1 - beta) w_g + beta sum_i n_i w_i / sum_i n_i.

    Where the inner solve starts: the authors' code (CharlieDinh/pFedMe, and PFLlib's port) sets
    both the model the inner solve updates and the local model to w_g at the start of every round;
    within a round each solve continues from the previous batch's theta_i. That is the default
    here. `algorithm.inner_warm_start: true` starts each round from the client's previous theta_i
    instead, as pfl_dist did before it followed the authors.

    The personal model evaluated is theta_i from the client's last round (per-client state), the
    paper's personalized model. (In both codes the personalized parameters alias the model's, which
    are overwritten before the evaluation: the authors' evaluate the local model w_i after its local
    steps, PFLlib's the w_g it was just sent.)

    eta_p auto is 1/(L + lam), for the inner objective's smoothness L + lam; eta auto is 1/(L + lam)
    too, so w_i moves by the fraction eta lam < 1 towards theta_i. The authors' optimizer also adds
    0.001 theta to the inner gradient (a weight decay the paper does not have); pfl_dist does not."""

    # issue 21: the inner solve starts from w_g (was: the previous theta_i)
    info = MethodInfo("pfedme", "pFedMe", uses_lam=True,
                      reads=("algorithm.personal_lr", "algorithm.inner_steps", "algorithm.inner_warm_start",
                             "algorithm.beta"),
                      paper="Dinh et al., NeurIPS 2020", colors="#6a3d9a", marker="v",  # purple
                      results_changed_with="algorithm.inner_warm_start")
    server_step_keys = ("algorithm.beta",)

    def default_personal_lr(self) -> float:
        """1/(L + lam): the inner objective f_i(theta; b) + (lam/2)||theta - w_i||^2 is (L + lam)-smooth.
        L is algorithm.smoothness: eta steps the envelope, not f_i, so 1/eta is no bound for f_i."""
        return 1.0 / (self.smoothness + self.lam)

    def client_rows(self) -> tuple[Row, ...]:
        return (Row("personal_models", "global"),)

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        task = ctx.task
        local = _reset(ctx)
        theta = state["personal_models"].clone() if self.cfg.inner_warm_start else _reset(ctx)
        for batch in task.batches(ctx.rows, round_idx=ctx.round_idx):
            for _ in range(self.cfg.inner_steps):
                prox_step(task, theta, batch, lr=self.personal_lr, anchor=local, lam=self.lam)
            step = (local - theta).mul_(self.local_lr * self.lam)
            if batch.active is not None:
                step.mul_(batch.active.unsqueeze(1))
            local.sub_(step)
        return ClientOutput(sent=local, keep={"personal_models": theta})

    def server_update(self, global_model: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        beta = self.cfg.beta
        return aggregate if beta == 1.0 else (1 - beta) * global_model + beta * aggregate

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        return state["personal_models"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "personal_lr": self.personal_lr, "beta": self.cfg.beta}


class APFL(Algorithm):
    """APFL (Deng, Kamani, Mahdavi, 2020), Algorithm 1: adaptive personalized FL.

    A sampled client sets w_i <- w_g and, for every step on batch b, with g = grad f_i(vbar_i; b)
    at the mixture vbar_i = alpha_i v_i + (1 - alpha_i) w_i (all taken at the step's start):

        w_i     <- w_i - eta grad f_i(w_i; b)
        v_i     <- v_i - eta_p alpha_i g
        alpha_i <- clip_[0,1]( alpha_i - eta_p <v_i - w_i, g> )

    It sends w_i and keeps v_i and alpha_i (alpha_i starts at algorithm.alpha). Server: the
    weighted mean. The personalized model evaluated is alpha_i v_i + (1 - alpha_i) w_g.
    eta_p auto is eta (1/L under local_lr auto): v_i's objective f_i(alpha_i v + (1 - alpha_i) w_i)
    is alpha_i^2 L-smooth, at most L; alpha_i takes the same step, as in the paper."""

    info = MethodInfo("apfl", "APFL", reads=("algorithm.personal_lr", "algorithm.alpha"), paper="Deng et al., 2020",
                      colors="#ad017e", marker="X")  # magenta

    @property
    def prox_weight(self) -> float:
        return 0.0

    def client_rows(self) -> tuple[Row, ...]:
        return (Row("personal_models", "global"), Row("alpha", self.cfg.alpha, shape=(1,)))

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        task = ctx.task
        local, personal, alpha = _reset(ctx), state["personal_models"].clone(), state["alpha"].clone()
        for batch in task.batches(ctx.rows, round_idx=ctx.round_idx):
            mixed = alpha * personal + (1 - alpha) * local
            grad_w = task.gradient(local, batch)
            grad_mixed = task.gradient(mixed, batch)
            grad_alpha = ((personal - local) * grad_mixed).sum(dim=1, keepdim=True)
            active = 1.0 if batch.active is None else batch.active.unsqueeze(1)
            local.sub_(grad_w * active, alpha=self.local_lr)
            personal.sub_(alpha * grad_mixed * active, alpha=self.personal_lr)
            alpha = (alpha - self.personal_lr * grad_alpha * active).clamp_(0.0, 1.0)
        return ClientOutput(sent=local, keep={"personal_models": personal, "alpha": alpha})

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        alpha = state["alpha"]
        return alpha * state["personal_models"] + (1 - alpha) * global_model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "personal_lr": self.personal_lr, "alpha_init": self.cfg.alpha}


class StartsFromGlobal(Algorithm):
    """Clients start every round from w_g with no proximal term and keep no per-client state
    (Per-FedAvg, FedAvg-FT: their personalization happens at evaluation)."""

    kept_step_keys = ()
    eval_step_keys = ("algorithm.personal_lr",)

    @property
    def prox_weight(self) -> float:
        return 0.0

    def client_rows(self) -> tuple[Row, ...]:
        return ()


class PerFedAvg(StartsFromGlobal):
    """Per-FedAvg, first-order (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020), Algorithm 1 with the FO
    approximation of the meta-gradient. A sampled client sets w_i <- w_g and, for every step with
    batch b of the local schedule and b' of an independent second schedule:

        temp <- w_i - alpha grad f_i(w_i; b)           alpha = algorithm.personal_lr
        w_i  <- w_i - beta grad f_i(temp; b')          beta  = algorithm.local_lr

    then sends w_i; server: the weighted mean. Personalization happens at evaluation: one
    gradient step from w_g on the client's whole training set, w_g - alpha grad f_i(w_g).
    No per-client state. alpha auto is eta (1/L under local_lr auto): a gradient step on f_i."""

    info = MethodInfo("perfedavg", "Per-FedAvg (FO)", reads=("algorithm.personal_lr",),
                      paper="Fallah et al., NeurIPS 2020", colors="#a6761d", marker="*", kept_models=0)  # ochre
    sent_step_keys = ("algorithm.local_lr", "algorithm.personal_lr")  # w_i steps from w_i - alpha grad

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        task = ctx.task
        local = _reset(ctx)
        first = task.batches(ctx.rows, round_idx=ctx.round_idx)
        second = task.batches(ctx.rows, round_idx=ctx.round_idx, stream=SECOND_BATCH_STREAM)
        for batch, batch2 in zip(first, second, strict=True):
            temp = local - self.personal_lr * task.gradient(local, batch)
            grad = task.gradient(temp, batch2)
            if batch.active is not None:
                grad.mul_(batch.active.unsqueeze(1))
            local.sub_(grad, alpha=self.local_lr)
        return ClientOutput(sent=local, keep={})

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            rows = torch.arange(len(task.client_ids), device=global_model.device)
        models = global_model.expand(len(rows), -1).clone()
        return models - self.personal_lr * task.gradient(models, task.full_batch(rows))


class FedAvgFT(StartsFromGlobal):
    """FedAvg with fine-tuning: training is FedAvg (clients reset to w_g, local SGD, the server
    averages); at every evaluation each client fine-tunes w_g with algorithm.personal_epochs
    epochs of SGD (step eta_p) on its own data and is evaluated with the result. The fine-tuning
    cost is paid at evaluation, and sends nothing. No per-client state. eta_p auto is eta (1/L
    under local_lr auto): fine-tuning is SGD on the same f_i as the local phase."""

    info = MethodInfo("fedavg_ft", "FedAvg-FT", reads=("algorithm.personal_lr", "algorithm.personal_epochs"),
                      colors="#e78ac3", marker="d", kept_models=0)  # pink

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        task = ctx.task
        sent = local_sgd(task, _reset(ctx), ctx.rows, round_idx=ctx.round_idx, lr=self.local_lr)
        return ClientOutput(sent=sent, keep={})

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            rows = torch.arange(len(task.client_ids), device=global_model.device)
        models = global_model.expand(len(rows), -1).clone()
        return local_sgd(task, models, rows, round_idx=round_idx, lr=self.personal_lr,
                         epochs=self.cfg.personal_epochs, stream=FINETUNE_STREAM)
