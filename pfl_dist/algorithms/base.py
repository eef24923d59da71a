"""The algorithm interface: the framework supplies primitives, the algorithm composes them.

A round on every rank (pfl_dist/train.py):

    out = algorithm.client_update(ClientRound(task, rows, round_idx, w_g), state rows)
    avg = exchange.run_round(sent=out.sent, global_model=algorithm.wire_reference(w_g), ...)
    w_g = algorithm.server_update(w_g, avg)
    state[rows] = out.keep                       only once the round completed on every rank

- Per-client state is declared, not allocated: `client_rows()` names each row a client keeps and
  its default (pfl_dist/store.py `Row`: "global" = a copy of the initial w_g, "zeros", or a
  constant): FedCLUP's local model, Ditto's personal model, SCAFFOLD's c_i (zeros), APFL's
  alpha_i (algorithm.alpha). The Trainer's ClientStore holds them under `algo/`, beside the
  codec's residuals and the update counts; it hands the sampled rows to `client_update` and
  writes back what it keeps; checkpoints save every row in their "clients" section and re-shard
  them by client id (pfl_dist/checkpoint.py), so no algorithm has code for it. Server-side state
  is set up from the initial w_g in `init_server_state`.
- What is sent is the algorithm's choice (`wire_shapes`, `wire_reference`): the whole model,
  only the body of a body/head model (FedRep, FedPer), or the model and a control variate
  (SCAFFOLD). The Exchange packs, codes and counts exactly that, so the byte ledger shows it.
  What the message is (`info.message`, pfl_dist/methods.py: a fresh increment, or kept state
  such as FedCLUP's w_i) decides whether an error-feedback codec keeps a residual per client
  (docs/ARCHITECTURE.md, "Error feedback per (algorithm, codec) pair").
- Server-side state that is not w_g (SCAFFOLD's c, FedCLUP's lambda history) is the algorithm's
  own `state_dict`, saved in the checkpoint's replicated section.
- The client maths is one path, below: `prox_step` is THE proximal step (one step of every
  client on one batch: w <- w - lr (grad f_i(w; batch) + lam (w - anchor) [+ correction]), on
  the parameters trained, for the batch's active clients), and `local_sgd` is THE local loop
  (`prox_step` over the task's schedule, `Task.batches`: K full-batch steps or E epochs of each
  client's own shuffled minibatches). Every method's client steps go through them: FedCLUP,
  FedAvg, FedProx, LocalTrain and FedAdam (`local_sgd` with the proximal term), Ditto, FedAvg-FT,
  FedRep, FedPer, SCAFFOLD (`local_sgd`), pFedMe's inner solve (`prox_step`); APFL and
  Per-FedAvg compose `Task.gradient` themselves (their steps are not proximal steps). A plug-in
  uses the same two functions.
- Fast path: `local_sgd(..., fused=True)` lets the task run the whole local phase with a fused
  solver when it has one for it (`Task.fused_local_phase`: the linear softmax kernels of
  pfl_dist/solvers/linear.py on clients with equal sample counts, full-batch). The same steps,
  other rounding (tests/unit/test_client_maths.py: to 1e-12 in float64); the paper's four
  methods take it, so their float64 runs stay what tests/unit/test_golden.py pins. Where no
  fused solver applies (minibatches, padded clients, other models, a correction, a subset of
  parameters) the generic loop runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from pfl_dist.config import AlgorithmConfig
from pfl_dist.errors import ConfigError
from pfl_dist.methods import MethodInfo
from pfl_dist.store import ClientStore, Row
from pfl_dist.tasks.base import Batch, Task

if TYPE_CHECKING:
    from pfl_dist.comm import Communicator
    from pfl_dist.tracking import NullLogger, RunLogger

ClientState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientRound:
    """What a client update may use: the task's primitives, which clients, which round, and w_g."""

    task: Task
    rows: torch.Tensor  # local row indices of this rank's sampled clients, sorted by client id
    round_idx: int
    global_model: torch.Tensor  # w_g at the start of the round (P,): what the clients received of it
    # comm.downlink_codec: the clients' decoded copy of `wire_reference(w_g)` (SCAFFOLD's [x, c]);
    # None without a downlink codec (then they received w_g itself)
    received: torch.Tensor | None = None


@dataclass(frozen=True)
class ClientOutput:
    sent: torch.Tensor  # (k, wire size): what each sampled client sends (empty if nothing is sent)
    keep: ClientState  # new rows of (some of) the per-client state


@dataclass(frozen=True)
class RoundEnd:
    """What an end-of-round callback may use (FedCLUP's lam = auto)."""

    round_num: int
    num_rounds: int
    task: Task
    # this rank's per-client rows: read the clients needed, or every client block by block
    # (`store.chunks`), never every row of the model's size at once
    store: ClientStore
    update_counts: torch.Tensor  # (k,) local updates each client of this rank received
    global_model: torch.Tensor
    comm: Communicator
    logger: RunLogger | NullLogger
    is_logging_rank: bool
    # The evaluation cohort's rows on this rank (train.eval_clients; pfl_dist/sampling.py), None
    # when every client is evaluated: a statistic over clients may scan these rows, not all k.
    cohort_rows: torch.Tensor | None = None


def prox_step(task: Task, models: torch.Tensor, batch: Batch, *, lr: float, anchor: torch.Tensor | None = None,
              lam: float = 0.0, correction: torch.Tensor | None = None, trained: slice | None = None) -> None:
    """The proximal step, in place, of every client on its rows of `batch`:

        w <- w - lr * (grad f_i(w; batch) + lam (w - anchor) + correction)

    only on the parameters `trained` (all when None), only for the batch's active clients (a
    client whose epoch is over sits the step out). `anchor` is (P,) (w_g: FedProx, FedCLUP, Ditto's
    personal solve) or (k, P) (each client's own: pFedMe's w_i); `correction` (k, P) or (P,) is
    SCAFFOLD's c - c_i. Its operations, in their order, are those of the former padded image
    solvers and of the methods' own loops it replaced, so their results kept every bit."""
    grad = task.gradient(models, batch)
    if lam:
        assert anchor is not None, "a proximal weight needs an anchor"
        grad.add_(models - anchor, alpha=lam)
    if correction is not None:
        grad.add_(correction)
    if batch.active is not None:
        grad.mul_(batch.active.unsqueeze(1))
    if trained is None:
        models.sub_(grad, alpha=lr)
    else:
        models[:, trained].sub_(grad[:, trained], alpha=lr)


def local_sgd(task: Task, models: torch.Tensor, rows: torch.Tensor, *, round_idx: int, lr: float,
              anchor: torch.Tensor | None = None, lam: float = 0.0, correction: torch.Tensor | None = None,
              trained: slice | None = None, epochs: int | None = None, stream: int = 0,
              fused: bool = False) -> torch.Tensor:
    """The local loop, in place on `models` (one row per client in `rows`), returned: `prox_step`
    on every batch of the task's schedule `task.batches(rows, round_idx=, epochs=, stream=)`
    (epochs None = the configured local phase; `stream` > 0 = shuffles of a second solve).

    fused=True: when the call is the configured local phase of the proximal objective (all
    parameters, no correction, epochs None, stream 0), the task may run it with its fused solver
    (`Task.fused_local_phase`; None = it has none for this case, and the loop runs). The same
    steps with other rounding: the paper's four methods pass it (their float64 runs are pinned to
    it by tests/unit/test_golden.py); the others keep the loop, so their results are unchanged."""
    if fused and correction is None and trained is None and epochs is None and stream == 0:
        done = task.fused_local_phase(models, rows, anchor=models.new_zeros(models.shape[1]) if anchor is None
                                      else anchor, lam=lam, lr=lr, round_idx=round_idx)
        if done is not None:
            return done
    for batch in task.batches(rows, round_idx=round_idx, epochs=epochs, stream=stream):
        prox_step(task, models, batch, lr=lr, anchor=anchor, lam=lam, correction=correction, trained=trained)
    return models


def count_steps(batches: Iterable[Batch], num_clients: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(k,) how many of `batches` each client takes (SCAFFOLD's K per client)."""
    steps = torch.zeros(num_clients, dtype=dtype, device=device)
    for batch in batches:
        steps += 1 if batch.active is None else batch.active
    return steps


class Algorithm:
    """Base class: the FedAvg-shaped defaults every method overrides where it differs.

    A method is a subclass whose body assigns the literal `info = MethodInfo(...)` (its facts,
    pfl_dist/methods.py): in a module of pfl_dist/algorithms/ it is a built-in, found there by
    name; elsewhere it is a plug-in, named `module:Class` in the config. A subclass without its own
    `info` is a shared base (ProxLocalUpdate, BodyHead), not a method."""

    name: ClassVar[str]  # algorithm.name: `info.name`, set for every class that declares its own info
    info: ClassVar[MethodInfo]
    # algorithm.client_weights = auto: how its paper weighs the clients in the server's means
    paper_client_weights: ClassVar[Literal["samples", "uniform"]] = "samples"
    # The config keys whose steps make what a client sends, what it keeps (its personal state),
    # w_g from the clients' mean, and the models personalized at evaluation: a divergence names
    # the ones of what became non-finite (pfl_dist/divergence.py).
    sent_step_keys: ClassVar[tuple[str, ...]] = ("algorithm.local_lr",)
    kept_step_keys: ClassVar[tuple[str, ...]] = ("algorithm.personal_lr",)
    server_step_keys: ClassVar[tuple[str, ...]] = ()  # () = w_g is the mean itself
    eval_step_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "info" in cls.__dict__:
            cls.name = cls.info.name

    def __init__(self, cfg: AlgorithmConfig, *, smoothness: float, groups: dict[str, slice] | None = None,
                 participation: float = 1.0) -> None:
        self.cfg = cfg
        self.smoothness = smoothness
        self.groups = groups
        self.participation = participation  # |S| / N, the sampled share of clients per round
        self.set_lam(cfg.lam_auto_init if cfg.lam == "auto" else cfg.lam)

    # --- step sizes --------------------------------------------------------------------------

    def set_lam(self, lam: float) -> None:
        """Set lambda and every step size derived from it (lam=auto changes it mid-run)."""
        self.lam = lam
        self.local_lr = self.default_local_lr() if self.cfg.local_lr == "auto" else float(self.cfg.local_lr)

    def default_local_lr(self) -> float:
        """eta = 1/(L + lam): stable for the proximal objective (docs/METHOD.md §2)."""
        return 1.0 / (self.smoothness + self.prox_weight)

    @property
    def prox_weight(self) -> float:
        return self.lam

    @property
    def personal_lr(self) -> float:
        return self.default_personal_lr() if self.cfg.personal_lr == "auto" else float(self.cfg.personal_lr)

    def default_personal_lr(self) -> float:
        """A personal step on f_i alone (APFL, Per-FedAvg, FedRep's head, FedAvg-FT): eta, the step
        the local phase already takes on the same f_i (1/L with local_lr auto)."""
        return self.local_lr

    # --- the server's means --------------------------------------------------------------------

    @property
    def client_weights(self) -> Literal["samples", "uniform"]:
        return self.paper_client_weights if self.cfg.client_weights == "auto" else self.cfg.client_weights

    def aggregation_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """(k,) each sampled client's weight in the server's means (the Exchange divides by their
        sum over all ranks): its sample count n_i, or 1 for every client (uniform)."""
        return counts if self.client_weights == "samples" else torch.ones_like(counts)

    # --- per-client state ----------------------------------------------------------------------

    def client_rows(self) -> tuple[Row, ...]:
        """The per-client rows it keeps, declared (pfl_dist/store.py): the Trainer's ClientStore
        holds them under `algo/`, hands `client_update` the sampled clients' rows, writes back what
        it keeps, and checkpoints and re-shards them. Default: every client's local model, w_g
        until the client first trains."""
        return (Row("local_models", "global"),)

    def init_server_state(self, global_model: torch.Tensor) -> None:
        """Set up server-side state (`state_dict`) from the initial w_g, once, before round 0 or
        before a resume loads it (SCAFFOLD's c, FedAdam's moments). Default: nothing."""

    # --- one round -----------------------------------------------------------------------------

    def client_update(self, ctx: ClientRound, state: ClientState) -> ClientOutput:
        raise NotImplementedError

    def wire_shapes(self, shapes: list[torch.Size]) -> list[torch.Size]:
        """The parameter tensors of one client's message (default: the whole model)."""
        return list(shapes)

    def wire_reference(self, global_model: torch.Tensor) -> torch.Tensor:
        """What the server holds of what clients send (a codec codes sent - this)."""
        return global_model

    def received_model(self, global_model: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """(P,) the model a client starts from when it received `received`, its decoded copy of
        `wire_reference(global_model)` (comm.downlink_codec): the inverse of `wire_reference`
        (default: the received vector is the model)."""
        if received.shape != global_model.shape:
            raise ConfigError(f"comm.downlink_codec: algorithm {self.name} sends a wire reference of "
                              f"{received.numel()} values, not the model's {global_model.numel()}; it needs "
                              "its own received_model to take a downlink codec")
        return received

    def server_update(self, global_model: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """w_g from the weighted mean of what was sent (default: the mean itself)."""
        return aggregate

    def end_of_round(self, end: RoundEnd) -> None:
        """A callback after every completed round (default: nothing)."""

    # --- evaluation ----------------------------------------------------------------------------

    def personal_models(self, task: Task, state: ClientState, global_model: torch.Tensor,
                        round_idx: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(k, P) the model each client of this rank is evaluated with (default: its local model).
        With `rows` (local row indices: the evaluation cohort's members) `state` holds those rows
        only, and the result is (len(rows), P): an evaluation on a cohort computes no other row."""
        return state["local_models"]

    # --- checkpointed server-side state and the summary ------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_lam(state["lam"])

    def describe(self) -> dict[str, Any]:
        """The settings as resolved ('auto' replaced by what it chose): summary.json "algorithm",
        results.csv's step-size and client-weight columns."""
        described = {"lam": self.lam, "local_lr": self.local_lr, "smoothness": self.smoothness,
                     "client_weights": self.client_weights}
        if "algorithm.personal_lr" in self.info.reads:
            described["personal_lr"] = self.personal_lr
        return described

    def summary_fields(self) -> dict[str, Any]:
        """Extra summary.json keys (FedCLUP: the lambdas lam=auto chose)."""
        return {"lambda_auto": None, "lambda_auto_history": []}


def with_head(global_model: torch.Tensor, local_models: torch.Tensor, groups: dict[str, slice]) -> torch.Tensor:
    """(k, P): w_g's body with each client's own head."""
    models = global_model.repeat(len(local_models), 1)
    models[:, groups["head"]] = local_models[:, groups["head"]]
    return models
