"""FedCLUP and the baselines of its paper: FedAvg, FedProx, LocalTrain.

All four run the local phase of proximal steps on f_i(w) + (lam/2)||w - w_g||^2 (K full-batch
steps or E epochs of minibatch SGD) through the one client-maths path, `local_sgd`
(pfl_dist/algorithms/base.py), with `fused=True`: where the task has a fused solver for it (the
linear softmax kernels on equal-count clients) that runs instead of the generic loop. They send
the whole model; they differ in where a sampled client starts, the proximal weight, and the
global step. Their float64 runs are pinned bit for bit (tests/unit/test_golden.py).
"""

from __future__ import annotations

from typing import Any

import torch

from pfl_dist.aggregate import envelope_step
from pfl_dist.algorithms.base import Algorithm, ClientOutput, ClientRound, ClientState, RoundEnd, local_sgd
from pfl_dist.comm import Traffic
from pfl_dist.methods import MethodInfo


class ProxLocalUpdate(Algorithm):
    """The local step of the paper's four methods: w_i <- K proximal steps from a start point."""

    resets_local_models = False  # True: start from w_g (FedAvg, FedProx); False: from w_i
    kept_step_keys = ("algorithm.local_lr",)  # the kept local model is the sent one

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        local = state["local_models"]
        models = ctx.global_model.expand_as(local).clone() if self.resets_local_models else local.clone()
        models = local_sgd(ctx.task, models, ctx.rows, round_idx=ctx.round_idx, lr=self.local_lr,
                           anchor=ctx.global_model, lam=self.prox_weight, fused=True)
        return ClientOutput(sent=models, keep={"local_models": models})


class FedCLUP(ProxLocalUpdate):
    """Yu et al., ICML 2025. Persistent local models, warm-started every round:

        w_i <- K steps of  w_i - eta (grad f_i(w_i) + lam (w_i - w_g))          (clients)
        w_g <- w_g - gamma lam (w_g - sum_i n_i w_i / sum_i n_i)               (server)

    a gradient step on the average Moreau envelope, gamma = 1/lam + 1/L by default. The message
    w_i - w_g is kept state (`info.message`): what a codec leaves out of it is still in it next
    round, so an error-feedback codec keeps no residual for FedCLUP.

    With algorithm.lam = auto, lambda is FedCLUP's own callback (`end_of_round`): after round
    w = warm-up x rounds (and, with lam_auto_refresh, after 2w, 3w, ... before the last) it
    estimates R_hat = mean ||w_i - w_g|| over the clients trained so far and sets lambda by the
    paper's rule (`theory_lambda`, docs/METHOD.md §3).
    """

    info = MethodInfo("fedclup", "FedCLUP", message="state", uses_lam=True,
                      reads=("algorithm.global_lr", "algorithm.lam_auto_c", "algorithm.lam_auto_warmup",
                             "algorithm.lam_auto_init", "algorithm.lam_auto_refresh"),
                      paper="Yu et al., ICML 2025", colors="Reds", marker="^")
    server_step_keys = ("algorithm.global_lr",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lambda_choices: list[dict[str, float]] = []  # lam=auto: every (round, R_hat, lam) chosen
        super().__init__(*args, **kwargs)

    def set_lam(self, lam: float) -> None:
        super().set_lam(lam)
        if self.cfg.global_lr == "auto":
            # gamma = 1/lam + 1/L, so gamma * lam = 1 + lam/L (well defined at lam = 0).
            self.step_factor = 1.0 + lam / self.smoothness
        elif self.cfg.global_lr == "1/lam":
            self.step_factor = 1.0  # gamma * lam = 1: w_g is the weighted average of the local models
        else:
            self.step_factor = float(self.cfg.global_lr) * lam

    def server_update(self, global_model: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        return envelope_step(global_model, aggregate, step_factor=self.step_factor)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "global_step_factor": self.step_factor}

    # --- lam = auto ----------------------------------------------------------------------------

    def is_lambda_auto_round(self, round_num: int, num_rounds: int) -> bool:
        """Re-estimating matters because R_hat is measured under the lambda in force: a proximal
        term of weight lam_auto_init holds every w_i near w_g and shrinks R_hat, so one estimate
        mostly reflects the warm-up's lambda (docs/RESULTS.md §1b)."""
        if self.cfg.lam != "auto":
            return False
        warmup = max(1, round(self.cfg.lam_auto_warmup * num_rounds))
        refresh = self.cfg.lam_auto_refresh and round_num % warmup == 0 and round_num < num_rounds
        return round_num == warmup or refresh

    def end_of_round(self, end: RoundEnd) -> None:
        if self.is_lambda_auto_round(end.round_num, end.num_rounds):
            self.choose_lambda(end)

    def choose_lambda(self, end: RoundEnd) -> None:
        """R_hat = mean ||w_i - w_g|| over clients trained so far (one telemetry all-reduce),
        then lambda by the paper's rule with n = the mean client sample count. With an evaluation
        cohort (train.eval_clients=N) both are the cohort's statistics: the rows scanned are its
        members, not every client; if no member has trained yet, every client's (one more
        all-reduce, as without a cohort)."""
        sums = self._heterogeneity_sums(end, end.cohort_rows)
        if end.cohort_rows is not None and float(sums[1]) == 0:
            sums = self._heterogeneity_sums(end, None)
        r_hat, mean_samples = float(sums[0] / sums[1]), float(sums[2] / sums[3])
        lam = theory_lambda(r_hat, num_samples=mean_samples, c=self.cfg.lam_auto_c)
        self.set_lam(lam)
        choice = {"round": end.round_num, "R_hat": r_hat, "lam": lam, "num_samples": mean_samples}
        self.lambda_choices.append(choice)
        end.logger.log_lambda(choice)
        if end.is_logging_rank:
            print(f"lam=auto: after round {end.round_num}, R_hat {r_hat:.4g} with n {mean_samples:.0f} -> "
                  f"lam {lam:.4g}", flush=True)

    @staticmethod
    def _heterogeneity_sums(end: RoundEnd, rows: torch.Tensor | None) -> torch.Tensor:
        """[sum ||w_i - w_g|| over trained clients, trained clients, sum n_i, clients] over every
        rank's clients in `rows` (None: all of them)."""
        counts, samples = end.update_counts, end.task.sample_counts
        if rows is not None:
            counts, samples = counts[rows], samples[rows]
        trained = counts > 0
        distances = torch.cat([torch.linalg.vector_norm(state["local_models"][end.update_counts[block] > 0]
                                                        - end.global_model, dim=1)
                               for block, state in end.store.chunks("algo", rows)])
        sums = torch.stack([distances.double().sum(), trained.double().sum(), samples.double().sum(),
                            torch.tensor(float(len(trained)), dtype=torch.float64, device=distances.device)])
        return end.comm.all_reduce(sums.to(end.global_model.device), traffic=Traffic.TELEMETRY).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lambda_choices": list(self.lambda_choices)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lambda_choices = list(state["lambda_choices"])

    def summary_fields(self) -> dict[str, Any]:
        return {"lambda_auto": self.lambda_choices[-1] if self.lambda_choices else None,  # the lambda that ended
                "lambda_auto_history": list(self.lambda_choices)}


class FedAvg(ProxLocalUpdate):
    """McMahan et al. 2017: clients reset to w_g, take plain local steps, the server averages:
    w_i <- local SGD from w_g;  w_g <- sum_i n_i w_i / sum_i n_i. A client's personal model is
    its last local model."""

    info = MethodInfo("fedavg", "FedAvg", paper="McMahan et al., AISTATS 2017", colors="Blues", marker="o")
    resets_local_models = True

    @property
    def prox_weight(self) -> float:
        return 0.0


class FedProx(FedAvg):
    """Li et al. 2020: FedAvg with the proximal term (weight lam, the paper's mu) in the local loss."""

    info = MethodInfo("fedprox", "FedProx", uses_lam=True, lam_symbol="μ", paper="Li et al., MLSys 2020",
                      colors="#2ca02c", marker="D")  # green

    @property
    def prox_weight(self) -> float:
        return self.lam


class LocalTrain(ProxLocalUpdate):
    """lambda = 0 and no communication: every client trains alone on its own data."""

    info = MethodInfo("local", "LocalTrain", communicates=False, colors="Greys", marker="s")

    @property
    def prox_weight(self) -> float:
        return 0.0


def theory_lambda(r_hat: float, *, num_samples: float, c: float) -> float:
    """The paper's rule (docs/METHOD.md §3): lam = c / (n R^2) if R >= 1/sqrt(n), else c / (sqrt(n) R).

    The branches meet at lam = c when R = 1/sqrt(n). R_hat is floored at 1e-12, so identical
    clients give a very large (FedAvg-like) lambda instead of a division by zero.
    """
    r_hat = max(r_hat, 1e-12)
    if r_hat >= num_samples**-0.5:
        return c / (num_samples * r_hat**2)
    return c / (num_samples**0.5 * r_hat)
