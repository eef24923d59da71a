"""Shared body, personal head: FedRep and FedPer. Only the body is sent, coded and counted.

The task splits the flat model into parameter groups (`Task.parameter_groups`: the CNN's body
is conv1, conv2, fc1; its head is fc2). w_g holds the shared body; its head part stays at the
initial head and is never evaluated (summary.json has no global accuracy for these methods).
Each client keeps its whole local model; its head is its personal head. A client is evaluated
with w_g's body and its own head.
"""

from __future__ import annotations

from typing import Any

import torch

from pfl_dist.algorithms.base import Algorithm, ClientOutput, ClientRound, ClientState, local_sgd, with_head
from pfl_dist.algorithms.personal import PERSONAL_STREAM
from pfl_dist.methods import MethodInfo
from pfl_dist.tasks.base import Task


class BodyHead(Algorithm):
    @property
    def prox_weight(self) -> float:
        return 0.0

    @property
    def body(self) -> slice:
        assert self.groups is not None, "checked by the task registry: the model has a body/head split"
        return self.groups["body"]

    @property
    def head(self) -> slice:
        assert self.groups is not None
        return self.groups["head"]

    def wire_shapes(self, shapes: list[torch.Size]) -> list[torch.Size]:
        """The body's parameter tensors: the leading ones of the flat model, up to the head."""
        wire, size = [], 0
        for shape in shapes:
            if size >= self.body.stop:
                break
            wire.append(shape)
            size += int(torch.Size(shape).numel())
        assert size == self.body.stop, "the body ends at a parameter tensor boundary"
        return wire

    def wire_reference(self, global_model: torch.Tensor) -> torch.Tensor:
        return global_model[self.body]

    def received_model(self, global_model: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """w_g with the received body (the head is each client's own: `with_head`)."""
        model = global_model.clone()
        model[self.body] = received
        return model

    def server_update(self, global_model: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        updated = global_model.clone()
        updated[self.body] = aggregate
        return updated

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        assert self.groups is not None
        return with_head(global_model, state["local_models"], self.groups)


class FedRep(BodyHead):
    """FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021), Algorithm 1. A sampled client
    starts from (w_g body, its head h_i) and runs

        head: algorithm.personal_epochs epochs of  h_i <- h_i - eta_p grad_h f_i(body, h_i; b)
        body: the local phase (E epochs / K steps) of  body <- body - eta grad_body f_i(body, h_i; b)

    (the head fixed during the body's steps); it sends its body and keeps h_i.
    Server: body of w_g <- sum_i n_i body_i / sum_i n_i. eta_p auto is eta (1/L under local_lr
    auto): f_i as a function of the head alone is at most L-smooth."""

    info = MethodInfo("fedrep", "FedRep", parameter_groups=True, global_model=False,
                      reads=("algorithm.personal_lr", "algorithm.personal_epochs"), paper="Collins et al., ICML 2021",
                      colors="#17becf", marker="p")  # cyan

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        assert self.groups is not None
        task = ctx.task
        models = with_head(ctx.global_model, state["local_models"], self.groups)
        local_sgd(task, models, ctx.rows, round_idx=ctx.round_idx, lr=self.personal_lr, trained=self.head,
                  epochs=self.cfg.personal_epochs, stream=PERSONAL_STREAM)
        local_sgd(task, models, ctx.rows, round_idx=ctx.round_idx, lr=self.local_lr, trained=self.body)
        return ClientOutput(sent=models[:, self.body], keep={"local_models": models})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "personal_lr": self.personal_lr}


class FedPer(BodyHead):
    """FedPer (Arivazhagan, Aggarwal, Singh, Choudhary, 2019). A sampled client starts from
    (w_g body, its head h_i), trains body and head together for the local phase,

        (body, h_i) <- (body, h_i) - eta grad f_i(body, h_i; b),

    sends its body and keeps h_i. Server: body of w_g <- sum_i n_i body_i / sum_i n_i. It takes no
    personal step (algorithm.personal_lr is not used)."""

    info = MethodInfo("fedper", "FedPer", parameter_groups=True, global_model=False,
                      paper="Arivazhagan et al., 2019", colors="#1b9e77", marker="h")  # teal
    kept_step_keys = ("algorithm.local_lr",)  # its head is trained with the body

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        assert self.groups is not None
        task = ctx.task
        models = with_head(ctx.global_model, state["local_models"], self.groups)
        local_sgd(task, models, ctx.rows, round_idx=ctx.round_idx, lr=self.local_lr)
        return ClientOutput(sent=models[:, self.body], keep={"local_models": models})
