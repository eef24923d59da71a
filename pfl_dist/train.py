"""Entry point: `torchrun --nproc-per-node=W -m pfl_dist.train --config X.yaml key=value ...`.

Also runs as a plain single process (`python -m pfl_dist.train ...`), hosting every client.
One round on every rank (docs/ARCHITECTURE.md):
    S_t <- sample(seed, t)                        no communication
    out <- algorithm.client_update(...)           my sampled clients, one batched computation:
                                                  what they send and the state rows they keep
    avg <- exchange.run_round(out.sent, ...)      the codec's collectives (pfl_dist/exchange/);
                                                  with comm.codec=none one all-reduce of
                                                  [sum n_i sent_i, sum n_i, stops]
    w_g <- algorithm.server_update(w_g, avg)      identical on all ranks
    state[my rows] <- out.keep; algorithm.end_of_round(...)   (FedCLUP's lam = auto)
    every checkpoint.every rounds: checkpoint     see pfl_dist/checkpoint.py (also resume and stop)
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from pfl_dist import divergence, inputs, rundir
from pfl_dist.aggregate import pack_weighted_sum, weighted_average
from pfl_dist.algorithms import Algorithm, ClientRound, ClientState, RoundEnd, build_algorithm
from pfl_dist.checkpoint import (
    RUN_COMPLETE,
    STOPPED_EXIT_CODE,
    Checkpointer,
    RunStopped,
    SavedRows,
    StopRequest,
    agree_on_resume_round,
    rng_state,
    set_rng_state,
)
from pfl_dist.comm import ByteLedger, Communicator, Counters, Traffic
from pfl_dist.config import Config, load_config
from pfl_dist.data.lazy import lazy_client, lazy_data, resident_clients
from pfl_dist.errors import ConfigError, NonFiniteMetricError, OneLineParser, PflError
from pfl_dist.evaluation import (
    CLIENT_PREFIX,
    COHORT_DISTRIBUTION,
    COHORT_PREFIX,
    PERSONAL_KEY,
    EvalReduction,
    accuracy_moments,
    cohort_distribution,
    ratio_moments,
    ratio_standard_error,
    with_standard_errors,
)
from pfl_dist.exchange.exchange import Exchange
from pfl_dist.guard import ParentDied, check_parent, die_with_parent, guard_output
from pfl_dist.interpreter import tool_command
from pfl_dist.models.init_file import initial_model
from pfl_dist.outputs import check_result_paths, format_bytes, metric_tag, write_bytes_atomic
from pfl_dist.resources import available_bytes, cache_bytes, check_memory, dense_store_bytes, store_backend
from pfl_dist.rundir import is_disk_error, os_error_text, prepare_run_dir, print_notes, saved_config
from pfl_dist.runtime import (
    Runtime,
    collective_failure,
    env_rank,
    exit_process,
    failure_reason,
    init_runtime,
    planned_rank_and_size,
    set_num_threads,
    shutdown_runtime,
)
from pfl_dist.sampling import client_block, eval_cohort, eval_cohort_size, participation_counts, sample_clients
from pfl_dist.store import STORE_DIR, ClientStore, DenseStore, LazyStore, Row
from pfl_dist.tasks import build_task
from pfl_dist.tasks.base import Task
from pfl_dist.timing import TIMING_KEY, RoundTimer, RoundTimes
from pfl_dist.tracking import NullLogger, RunLogger


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="pfl_dist.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML experiment config (defaults are used without one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a completed run of another config in the run dir (kept until the new one "
                             "completes)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def model_sha256(model: torch.Tensor) -> str:
    return hashlib.sha256(model.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


class Trainer:
    """Holds the replicated global model, this rank's local models, and the byte ledger."""

    def __init__(self, cfg: Config, runtime: Runtime, *, stop: StopRequest | None = None,
                 overwrite: bool = False) -> None:
        cfg.set_world_size(runtime.world_size)  # the run dir and identity are those of this world size
        self.cfg = cfg
        self.runtime = runtime
        self.ledger = ByteLedger()
        self.comm = Communicator(runtime, self.ledger)
        share_inputs(cfg, self.comm)  # the identity of the user files' contents, from rank 0
        block = client_block(runtime.rank, world_size=runtime.world_size, num_clients=cfg.data.num_clients)
        self.task: Task = build_task(cfg, client_ids=block, device=runtime.device)
        if lazy_data(cfg) and runtime.is_logging_rank:
            made = lazy_client(cfg.data.kind)
            smoothness = (f"; algorithm.smoothness=auto: every client {made} once at start-up (not kept), a number "
                          "skips that" if cfg.algorithm.smoothness == "auto" else "")
            print(f"data: lazy (data.lazy={str(cfg.data.lazy).lower()}): each client {made} when sampled or "
                  f"evaluated, at most {resident_clients(cfg, len(block))} clients' data held per rank (a round's "
                  f"sample + the evaluation cohort){smoothness}", flush=True)
        set_num_threads(runtime.local_world_size, cap=self.task.max_threads)
        num_sampled = len(sample_clients(0, seed=cfg.run.seed, num_clients=cfg.data.num_clients,
                                         sample_fraction=cfg.algorithm.sample_fraction))
        self.algorithm: Algorithm = build_algorithm(cfg.algorithm, smoothness=self._smoothness(),
                                                    groups=self.task.parameter_groups(),
                                                    participation=num_sampled / cfg.data.num_clients)
        # A plug-in written before cohorts has personal_models without `rows`: it computes every row.
        self.personal_models_take_rows = "rows" in inspect.signature(self.algorithm.personal_models).parameters
        self.global_model = initial_model(cfg.model.init_file, self.task)
        self.algorithm.init_server_state(self.global_model)
        # Every per-client row of this rank's clients, declared by its owner (pfl_dist/store.py):
        # the algorithm's (algo/), an error-feedback codec's residual (codec/), the update counts.
        self.store, self.store_choice = self._build_store(len(block))
        self.store.declare("algo", self.kept_rows(self.algorithm))
        self.store.declare("engine", [Row("update_counts", "zeros", shape=(), dtype=torch.float64)])
        self.exchange = Exchange(cfg.comm.codec, comm=self.comm, shapes=self.algorithm.wire_shapes(
                                 self.parameter_shapes()), client_ids=block,
                                 num_clients=cfg.data.num_clients, dtype=self.global_model.dtype,
                                 device=runtime.device, seed=cfg.run.seed, message=self.algorithm.info.message,
                                 store=self.store, downlink_codec=cfg.comm.downlink_codec,
                                 reference=self.algorithm.wire_reference(self.global_model))
        self.final_update_counts = torch.zeros(0, dtype=torch.long)
        # train.eval_clients: None = evaluate every client; else the cohort's members on this rank
        self.cohort_size = eval_cohort_size(cfg.train.eval_clients, cfg.data.num_clients)
        self.cohort_rows = None if self.cohort_size is None else self._my_rows(torch.from_numpy(eval_cohort(
            seed=cfg.run.seed, num_clients=cfg.data.num_clients, size=self.cohort_size)))
        self.round_times: list[float] = []
        self.timer = RoundTimer(rank=runtime.rank, world_size=runtime.world_size)  # compute / comm / wait
        self.last_round_times: list[RoundTimes] = []
        self.personal_distribution: dict[str, float] = {}  # of the last evaluation
        self.started = time.perf_counter()
        self.stop = stop if stop is not None else StopRequest()
        self.stop_agreed = False  # set when the evaluation reduction carried a stop (LocalTrain)
        self.resumed_from: list[int] = []
        self.summary: dict[str, Any] = {}  # set when train() ends
        # A checkpoint resumes only a run of the same identity (config and input file contents),
        # of any world size: Checkpointer leaves it out and re-shards (pfl_dist/rundir.py).
        self.checkpointer = Checkpointer(cfg.run_dir / "ckpt", rank=runtime.rank, world_size=runtime.world_size,
                                         num_clients=cfg.data.num_clients, keep=cfg.checkpoint.keep,
                                         config=cfg.identity(), replace_other_configs=overwrite)
        if self.cohort_size is not None and runtime.is_logging_rank:
            print(f"evaluation: a cohort of {self.cohort_size} of {cfg.data.num_clients} clients (train.eval_clients="
                  f"{cfg.train.eval_clients}); each metric on the clients carries its standard error, <metric>_se",
                  flush=True)
        self.start_round, num_events = self._resume()
        self.already_complete = self.start_round == RUN_COMPLETE  # nothing to train, nothing to write
        self.logger = (RunLogger(cfg.run_dir, cfg.to_dict(), world_size=runtime.world_size,
                                 start_round=self.start_round, num_events=num_events,
                                 metrics_measured_on=self.task.metrics_measured_on, inputs=cfg.inputs)
                       if runtime.is_logging_rank and not self.already_complete else NullLogger())

    @property
    def communicates(self) -> bool:
        return self.algorithm.info.communicates

    @property
    def client_state(self) -> ClientState:
        """Every row of the algorithm's per-client state (the store's `algo/` namespace)."""
        return self.store.rows("algo")

    @property
    def update_counts(self) -> torch.Tensor:
        """(k,) float64: how many local updates each client of this rank received."""
        return self.store.rows("engine")["update_counts"]

    @property
    def local_models(self) -> torch.Tensor:
        """(k, P) the models this rank's clients are evaluated with."""
        return self.algorithm.personal_models(self.task, self.client_state, self.global_model,
                                              self.cfg.train.num_rounds)

    def parameter_shapes(self) -> list[torch.Size]:
        """The flat model's parameter tensors, in order (a codec may compress the matrices)."""
        shapes = [t.shape for t in self.task.model_state_dict(self.global_model).values()]
        assert sum(s.numel() for s in shapes) == self.task.num_params
        return shapes

    def _build_store(self, num_clients: int) -> tuple[ClientStore, dict[str, Any]]:
        """The store.backend back-end (auto resolved by pfl_dist/resources.py `store_backend` from
        the dense store's size and the memory available to this rank), and its summary record:
        the setting, the back-end and the dense rows' size (not the available memory, which varies
        from run to run; the console line says it). Printed only when the store is lazy: a dense
        store is what every run had before the key."""
        cfg, runtime = self.cfg, self.runtime
        dense = dense_store_bytes(cfg, clients=num_clients, num_params=self.task.num_params)
        available = available_bytes()
        backend, why = store_backend(cfg, dense_bytes=dense, available=None if available is None
                                     else available // runtime.local_world_size)
        store: ClientStore
        if backend == "dense":
            store = DenseStore(num_clients, global_model=self.global_model)
        else:
            store = LazyStore(num_clients, global_model=self.global_model, cache_bytes=cache_bytes(cfg),
                              spill_dir=cfg.run_dir / STORE_DIR / f"rank{runtime.rank}")
            if runtime.is_logging_rank:
                print(f"store: lazy ({why}; a RAM cache of {cfg.store.cache_mb:g} MiB, spilled to "
                      f"{cfg.run_dir / STORE_DIR})", flush=True)
        return store, {"setting": cfg.store.backend, "backend": backend, "dense_rows_bytes": dense}

    @staticmethod
    def kept_rows(algorithm: Algorithm) -> tuple[Row, ...]:
        """The algorithm's declared per-client rows; ConfigError (one line) when its rows of the
        model's size are not as many as its `MethodInfo.kept_models`, which the memory estimate
        counts before anything runs (pfl_dist/resources.py)."""
        rows = tuple(algorithm.client_rows())
        models = [row.name for row in rows if row.shape is None]
        if len(models) != algorithm.info.kept_models:
            raise ConfigError(f"algorithm.name={algorithm.info.name}: its client_rows() keep {len(models)} row(s) of "
                              f"the model's size ({', '.join(models) or 'none'}) but its MethodInfo declares "
                              f"kept_models={algorithm.info.kept_models}; declare kept_models={len(models)}")
        return rows

    def _smoothness(self) -> float:
        """L: explicit, or the max over all clients of the per-client bound (one MAX reduce)."""
        if self.cfg.algorithm.smoothness != "auto":
            return float(self.cfg.algorithm.smoothness)
        local = torch.tensor([self.task.local_smoothness()], dtype=torch.float64, device=self.runtime.device)
        return float(self.comm.all_reduce(local, traffic=Traffic.TELEMETRY, op="max"))

    # --- one training round ------------------------------------------------------------

    def _my_rows(self, sampled: torch.Tensor) -> torch.Tensor:
        block = self.task.client_ids
        mine = sampled[(sampled >= block.start) & (sampled < block.stop)]
        return (mine - block.start).to(self.runtime.device)

    def run_round(self, round_idx: int) -> bool:
        """One round; False when a stop was agreed in its all-reduce (the round is then discarded
        on every rank, leaving the state of the previous round)."""
        started = time.perf_counter()
        self.comm.take_round_timing()  # set-up or evaluation collectives are not this round's
        cfg = self.cfg
        sampled = torch.from_numpy(sample_clients(round_idx, seed=cfg.run.seed, num_clients=cfg.data.num_clients,
                                                  sample_fraction=cfg.algorithm.sample_fraction))
        rows = self._my_rows(sampled)
        algo = self.algorithm
        # comm.downlink_codec: the clients start from (and anchor to) what they received of w_g,
        # the same on every rank (pfl_dist/exchange/downlink.py); None = w_g itself.
        received = (self.exchange.receive(round_idx, algo.wire_reference(self.global_model))
                    if self.communicates and self.exchange.downlink is not None else None)
        client_model = self.global_model if received is None else algo.received_model(self.global_model, received)
        # The sampled rows of the state (copies): committed only once the round completes.
        out = algo.client_update(ClientRound(task=self.task, rows=rows, round_idx=round_idx,
                                             global_model=client_model, received=received),
                                 self.store.read("algo", rows))
        diverged = divergence.diverged_parts(out, len(rows))
        first_client = self.task.client_ids.start
        if self.communicates:
            # A diverged client still joins the exchange, so every rank sees the NaN and stops.
            average = self.exchange.run_round(round_idx, global_model=algo.wire_reference(self.global_model),
                                              sent=divergence.carrying_divergence(out.sent, diverged), rows=rows,
                                              counts=algo.aggregation_weights(self.task.sample_counts[rows]),
                                              sampled=sampled.numpy(), stop=self.stop.requested,
                                              received=received)
            if average is None:
                return False
            if received is not None:
                self.exchange.commit_received(received)
            self.global_model = algo.server_update(self.global_model, average)
            divergence.check_round(round_idx + 1, diverged, rows=rows, first_client=first_client,
                                   num_clients=cfg.data.num_clients, mean=average, global_model=self.global_model,
                                   algorithm=algo, comm=self.comm)
        else:
            divergence.check_local(round_idx + 1, diverged, first_client=first_client, rows=rows, algorithm=algo)
        self.store.write("algo", rows, out.keep)
        self.store.write("engine", rows, {"update_counts": self.store.read("engine", rows)["update_counts"] + 1})
        self.round_times.append(time.perf_counter() - started)
        arrival, in_collective_s = self.comm.take_round_timing()
        self.timer.record(round_idx + 1, round_s=self.round_times[-1], arrival=arrival, in_collective_s=in_collective_s)
        return True

    # --- evaluation --------------------------------------------------------------------

    def evaluation_model(self) -> torch.Tensor:
        """w_g, or for LocalTrain the sample-weighted mean of local models (evaluation only)."""
        if self.communicates:
            return self.global_model
        # block by block (pfl_dist/store.py `chunks`; a dense store's one block is every client)
        parts = (pack_weighted_sum(state["local_models"], self.task.sample_counts[rows],
                                   num_params=self.task.num_params)
                 for rows, state in self.store.chunks("algo"))
        buffer = next(parts)
        for part in parts:
            buffer += part
        self.comm.all_reduce(buffer, traffic=Traffic.TELEMETRY)
        return weighted_average(buffer)

    def _job_vector(self, mine: torch.Tensor) -> torch.Tensor:
        """(m,) float64 with this rank's clients' values in their place, zeros elsewhere (summed
        over ranks by the evaluation all-reduce)."""
        vector = torch.zeros(self.cfg.data.num_clients, dtype=torch.float64, device=self.runtime.device)
        vector[self.task.client_ids.start: self.task.client_ids.stop] = mine.to(vector)
        return vector

    def evaluate(self, *, round_num: int = 0, final: bool = False) -> dict[str, float]:
        """Metric sums of every rank in one all-reduce (telemetry, not training traffic), owned by
        pfl_dist/evaluation.py's EvalReduction: each part adds its block.

        Every client evaluated (train.eval_clients all): each client's personal accuracy travels as
        one of m numbers, for the distribution over clients (mean, 10th percentile, std). On a
        cohort (self.cohort_rows: its members on this rank) each per-client metric travels as six
        sums instead, which give its standard error (`<metric>_se`). The final evaluation of all
        also sums how often each client was trained (m numbers, once), so the summary shows which
        clients took part, independent of the world size; on a cohort those counts come from the
        sampling schedule and only the number of clients whose kept count differs travels. Every
        rank's round timings since the last evaluation ride along (pfl_dist/timing.py).
        """
        global_model = self.evaluation_model()
        rows = self.cohort_rows
        sums = self.task.metric_sums(self._evaluated_models(global_model, round_num), global_model, rows)
        pairs = {name.removeprefix(CLIENT_PREFIX): sums.pop(name) for name in list(sums)
                 if name.startswith(CLIENT_PREFIX)}
        reduction = EvalReduction(self.runtime.device)
        for name, value in sums.items():
            reduction.add(name, value)
        if rows is None:
            reduction.add("client_correct", self._job_vector(pairs[PERSONAL_KEY][0]))
            reduction.add("client_count", self._job_vector(pairs[PERSONAL_KEY][1]))
        else:
            for name, pair in pairs.items():
                reduction.add(f"{COHORT_PREFIX}{name}", ratio_moments(pair))
            reduction.add(COHORT_DISTRIBUTION, accuracy_moments(pairs[PERSONAL_KEY]))
        expected_counts = None
        if final and rows is None:
            reduction.add("update_counts", self._job_vector(self.update_counts))
        elif final:  # on a cohort: the schedule's counts, checked against every rank's (one number)
            expected_counts = self._scheduled_update_counts()
            block = self.task.client_ids
            mismatched = (self.update_counts.cpu().long() != expected_counts[block.start: block.stop]).sum()
            reduction.add("update_count_mismatches", mismatched.double())
        if not self.communicates:  # no training all-reduce carries the stop flag
            reduction.add("stop_requests", torch.tensor(float(self.stop.requested), dtype=torch.float64))
        if self.ledger.measuring:
            reduction.add("measured_train", torch.tensor(float(self.ledger.measured_local[Traffic.TRAIN]),
                                                         dtype=torch.float64))
            reduction.add("measured_telemetry", torch.tensor(float(self.ledger.measured_local[Traffic.TELEMETRY]),
                                                             dtype=torch.float64))
        if self.runtime.distributed:
            reduction.add(TIMING_KEY, self.timer.eval_block(round_num, self.runtime.device))
        reduced = reduction.reduce(self.comm)
        if self.ledger.measuring:
            self.ledger.set_measured_totals(int(reduced.pop("measured_train")), int(reduced.pop("measured_telemetry")))
        if expected_counts is not None:
            differing = int(reduced.pop("update_count_mismatches"))
            if differing:  # a bug, not bad input: the engine's counts disagree with its own schedule
                raise RuntimeError(f"{differing} clients' local update counts differ from the sampling schedule's")
            self.final_update_counts = expected_counts
        elif final:
            self.final_update_counts = reduced.pop("update_counts").long()
        self.last_round_times = self.timer.absorb(round_num, reduced.pop(TIMING_KEY, None))
        self.stop_agreed = self.stop_agreed or float(reduced.pop("stop_requests", torch.zeros(()))) > 0
        errors: dict[str, float] = {}
        if rows is None:
            self.personal_distribution = accuracy_distribution(reduced.pop("client_correct"),
                                                               reduced.pop("client_count"))
        else:
            self.personal_distribution = cohort_distribution(reduced.pop(COHORT_DISTRIBUTION))
            errors = {name: ratio_standard_error(reduced.pop(f"{COHORT_PREFIX}{name}"),
                                                 population=self.cfg.data.num_clients) for name in pairs}
        metrics = self.task.finalize_metrics(reduced, global_model.cpu())
        if not self.algorithm.info.global_model:  # FedRep/FedPer: w_g is a body without a trained head
            metrics = {k: v for k, v in metrics.items() if not k.endswith("_global")}
        return with_standard_errors(metrics, errors)

    def _evaluated_models(self, global_model: torch.Tensor, round_num: int) -> torch.Tensor:
        """The models the evaluated clients of this rank are evaluated with: every client's, or on a
        cohort only its members' (their rows of the state; a fine-tuning method fine-tunes only
        them). An algorithm whose personal_models takes no `rows` (a plug-in written before
        cohorts) computes every row, and the members' are taken."""
        algorithm, rows = self.algorithm, self.cohort_rows
        if rows is None:
            return algorithm.personal_models(self.task, self.client_state, global_model, round_num)
        if not self.personal_models_take_rows:
            return algorithm.personal_models(self.task, self.client_state, global_model, round_num)[rows]
        return algorithm.personal_models(self.task, self.store.read("algo", rows), global_model, round_num, rows=rows)

    def _scheduled_update_counts(self) -> torch.Tensor:
        """(m,) int64: how many local updates each client receives in the completed run, from the
        sampling schedule (pfl_dist/sampling.py), with no communication."""
        cfg = self.cfg
        return torch.from_numpy(participation_counts(seed=cfg.run.seed, num_clients=cfg.data.num_clients,
                                                     sample_fraction=cfg.algorithm.sample_fraction,
                                                     num_rounds=cfg.train.num_rounds))

    def _is_eval_round(self, round_num: int) -> bool:
        return round_num % self.cfg.train.eval_every == 0 or round_num == self.cfg.train.num_rounds

    def _record(self, round_num: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "round": round_num,
            "wall_s": time.perf_counter() - self.started,
            "metrics": metrics,
            "personal": dict(self.personal_distribution),
            "comm": self.ledger.total[Traffic.TRAIN].to_dict(),
            "comm_telemetry": self.ledger.total[Traffic.TELEMETRY].to_dict(),
            "time": {**self.timer.record_fields(), "rounds": [vars(t) for t in self.last_round_times]},
        }

    # --- the loop ----------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        if self.already_complete:  # rank 0 holds the summary of this very config
            self.summary = read_saved_summary(self.cfg.run_dir) if self.runtime.is_logging_rank else {}
            return self.summary
        metrics = self._initial_evaluation()
        for round_idx in range(self.start_round, self.cfg.train.num_rounds):
            round_num = round_idx + 1
            check_parent()  # an orphaned worker stops before it writes anything more
            if not self.run_round(round_idx):
                self._stop(completed=round_idx)
            self.algorithm.end_of_round(RoundEnd(
                round_num=round_num, num_rounds=self.cfg.train.num_rounds, task=self.task, store=self.store,
                update_counts=self.update_counts, global_model=self.global_model, comm=self.comm,
                logger=self.logger, is_logging_rank=self.runtime.is_logging_rank, cohort_rows=self.cohort_rows))
            if self._is_eval_round(round_num):
                metrics = self.evaluate(round_num=round_num, final=round_num == self.cfg.train.num_rounds)
                self.logger.log_round_times(self.last_round_times)
            closed = self.ledger.close_round()
            self.logger.log_round(round_num, comm=closed, round_s=self.round_times[-1])
            if self._is_eval_round(round_num):
                self._log_eval(self._record(round_num, metrics))
            self._end_of_round(round_num)
        return self._finish(metrics)

    def _initial_evaluation(self) -> dict[str, float]:
        """Round 0 of a fresh run; a resumed run logged it before."""
        if self.start_round:
            return {}
        metrics = self.evaluate(round_num=0)
        self.ledger.close_round()
        self._log_eval(self._record(0, metrics))
        return metrics

    # --- checkpoint, resume, stop (the file format lives in pfl_dist/checkpoint.py) ---------

    def _end_of_round(self, round_num: int) -> None:
        """Stop here if the evaluation carried a stop (LocalTrain); else checkpoint when due. The
        final round is never checkpointed: its evaluation and summary are recomputed on resume."""
        if round_num == self.cfg.train.num_rounds:
            return
        if self.stop_agreed:
            self._stop(completed=round_num)
        every = self.cfg.checkpoint.every
        if every and round_num % every == 0:
            self._save_checkpoint(round_num)

    def _save_checkpoint(self, round_num: int) -> Path:
        self.logger.flush()  # the checkpoint counts the TensorBoard events: they must be on disk
        return self.checkpointer.save(round_num, self.state_dict())

    def _stop(self, *, completed: int) -> NoReturn:
        """Every rank gets here at the same round: checkpoint the last completed round and end."""
        if completed > self.start_round:
            where = f"checkpoint {self._save_checkpoint(completed)}"
        else:
            where = f"resumes from round {completed}" if completed else "no round completed, nothing to save"
        cause = self.stop.signal_name or "a signal to another rank"
        raise RunStopped(f"stopped by {cause} after round {completed}/{self.cfg.train.num_rounds}; {where}; "
                         "rerun the same command to resume")

    def _resume(self) -> tuple[int, int]:
        """Agree on the newest round every rank can load (one MIN all-reduce) and load it; 0 =
        start fresh; RUN_COMPLETE when rank 0's run dir holds this config's summary.json (run dirs
        of another config are refused or set aside before: pfl_dist/rundir.py).
        -> (round, TensorBoard events logged up to it)."""
        # A summary.json that does not parse does not make a run complete (rundir.saved_config).
        complete = self.runtime.is_logging_rank and saved_config(self.cfg.run_dir) is not None
        round_num = agree_on_resume_round(self.checkpointer, self.comm, num_rounds=self.cfg.train.num_rounds,
                                          complete=complete)
        if round_num == RUN_COMPLETE:
            return round_num, 0
        num_events = 0
        if round_num:
            state = self.checkpointer.load(round_num)
            num_events = state["rank"]["tensorboard_events"]
            self.load_state_dict(state, round_num=round_num)
            if self.runtime.is_logging_rank:
                reshard = (f", re-sharded from {state['world_size']} ranks"
                           if state["world_size"] != self.runtime.world_size else "")
                print(f"resume: round {round_num}/{self.cfg.train.num_rounds} from "
                      f"{self.checkpointer.root}{reshard}", flush=True)
        self.checkpointer.discard_after(round_num)
        return round_num, num_events

    def state_dict(self) -> dict[str, Any]:
        """Client rows (keyed by client id via the shard's client range), replicated state, and
        this rank's own state. The TensorBoard step is the round, stored by the checkpointer; the
        logger's event count lets a resume cut the event files back to it."""
        ledger = self.ledger.state_dict()
        return {
            "clients": self.store,  # written by segments (pfl_dist/checkpoint.py)
            "replicated": {"global_model": self.global_model.cpu(), "ledger_total": ledger["total"],
                           "exchange": self.exchange.replicated_state(),
                           **({"downlink": downlink} if (downlink := self.exchange.downlink_state()) else {}),
                           "algorithm": self.algorithm.state_dict(), "resumed_from": list(self.resumed_from)},
            "rank": {"round_times": list(self.round_times), "measured_local": ledger["measured_local"],
                     "timing": self.timer.state_dict(),
                     "wall_s": time.perf_counter() - self.started, "rng": rng_state(),
                     "tensorboard_events": self.logger.num_events},
        }

    def load_state_dict(self, state: dict[str, Any], *, round_num: int) -> None:
        device = self.runtime.device
        clients = state["clients"]
        self.exchange.check_client_rows(self.store.undeclared(clients))
        if isinstance(clients, SavedRows):
            self.store.load_saved(clients)
        else:  # a checkpoint of format 1
            self.store.load_state_dict(clients)
        replicated, own = state["replicated"], state["rank"]
        self.exchange.load_replicated_state(replicated["exchange"])
        self.exchange.load_downlink_state(replicated.get("downlink", {}))  # none: not in the checkpoint
        self.global_model = replicated["global_model"].to(device)
        self.ledger.load_state_dict({"total": replicated["ledger_total"], "measured_local": own["measured_local"]})
        # This attempt's set-up collectives (smoothness, the vote) are not part of the run: the
        # ledger counts the run as if uninterrupted, so totals equal an uninterrupted run's.
        self.ledger.round = {t: Counters() for t in Traffic}
        self.algorithm.load_state_dict(replicated["algorithm"])
        self.resumed_from = [*replicated["resumed_from"], round_num]
        self.round_times = list(own["round_times"])
        self.timer.load_state_dict(own.get("timing"), round_num=round_num, eval_every=self.cfg.train.eval_every)
        self.started = time.perf_counter() - own["wall_s"]
        set_rng_state(own["rng"])

    def _log_eval(self, record: dict[str, Any]) -> None:
        bad = [name for name, value in record["metrics"].items() if not math.isfinite(value)]
        if bad:  # before anything is written: results are JSON without NaN/Infinity
            *keys, last = ("data.R", "data.center_scale", "algorithm.local_lr", *self.algorithm.eval_step_keys)
            raise NonFiniteMetricError(f"round {record['round']}: metric {bad[0]} is {record['metrics'][bad[0]]} "
                                       f"(non-finite); check {', '.join(keys)} and {last}")
        self.logger.log_eval(record)
        if self.runtime.is_logging_rank:
            print(progress_line(record, num_rounds=self.cfg.train.num_rounds, round_times=self.round_times,
                                measured_on=self.task.metrics_measured_on), flush=True)

    def _finish(self, metrics: dict[str, float]) -> dict[str, Any]:
        final_model = self.evaluation_model() if not self.communicates else self.global_model
        summary = {
            "config": self.cfg.to_dict(),
            **({inputs.SECTION: inputs.digests(self.cfg.inputs)} if self.cfg.inputs else {}),
            "world_size": self.runtime.world_size,
            "backend": self.runtime.backend,
            "num_rounds_completed": self.cfg.train.num_rounds,
            "method": self.algorithm.info.to_dict(),
            "algorithm": self.algorithm.describe(),
            **self.algorithm.summary_fields(),  # lambda_auto, lambda_auto_history
            "resumed_from": self.resumed_from,
            "final": {metric_tag(name, self.task.metrics_measured_on): value for name, value in metrics.items()},
            "personal": dict(self.personal_distribution),
            "comm": self.ledger.total[Traffic.TRAIN].to_dict(),
            "comm_telemetry": self.ledger.total[Traffic.TELEMETRY].to_dict(),
            "time": {"wall_s": time.perf_counter() - self.started,
                     "round_s_median": statistics.median(self.round_times) if self.round_times else 0.0,
                     **self.timer.summary()},
            "global_model_sha256": model_sha256(final_model),
            "participation": participation_summary(self.final_update_counts),
            # which clients the metrics are measured on (train.eval_clients resolved)
            "evaluation": {"clients": self.cohort_size or self.cfg.data.num_clients,
                           "cohort": self.cohort_size is not None},
            # where rank 0 kept the per-client rows (store.backend resolved) and why
            "store": self.store_choice,
        }
        if self.runtime.is_logging_rank:
            final_dir = self.cfg.run_dir / "final"
            final_dir.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            torch.save(self.task.model_state_dict(final_model.cpu()), buffer)
            write_bytes_atomic(final_dir / "global.pt", buffer.getvalue())  # before summary.json, the marker
        self.logger.finish(summary, hparams=self._hparams())
        self.summary = summary
        return summary

    def _hparams(self) -> dict[str, Any]:
        cfg = self.cfg
        algo = cfg.algorithm
        lam = {"lam": self.algorithm.lam, "lam_auto": algo.lam == "auto"} if self.algorithm.info.uses_lam else {}
        return {"method": algo.name, **lam,
                "num_local_steps": algo.num_local_steps, "sample_fraction": algo.sample_fraction,
                "num_clients": cfg.data.num_clients, "R": cfg.data.R, "data": cfg.data.kind,
                "world_size": self.runtime.world_size, "seed": cfg.run.seed}

    def close(self) -> None:
        self.logger.close()
        self.store.close()


def participation_summary(update_counts: torch.Tensor) -> dict[str, Any]:
    """How many local updates each client received; the full list only for small federations."""
    summary: dict[str, Any] = {
        "num_local_updates": int(update_counts.sum()),
        "update_counts_sha256": hashlib.sha256(update_counts.numpy().tobytes()).hexdigest(),
    }
    if len(update_counts) <= 1000:
        summary["update_counts"] = update_counts.tolist()
    return summary



def accuracy_distribution(correct: torch.Tensor, count: torch.Tensor) -> dict[str, float]:
    """Per-client personal accuracy over the clients with test samples: mean (unweighted), 10th
    percentile (linear interpolation), population standard deviation (the fairness view)."""
    has_test = count > 0
    acc = (correct[has_test] / count[has_test]).double()
    if not len(acc):
        return {}
    return {"acc_personal_mean": float(acc.mean()), "acc_personal_p10": float(torch.quantile(acc, 0.1)),
            "acc_personal_std": float(acc.std(correction=0))}


def progress_line(record: dict[str, Any], *, num_rounds: int, round_times: list[float], measured_on: str) -> str:
    """'round 50/50 | eval/ITR 8.094 ... train/acc_personal 0.98 | ...': metrics named by where they
    were measured, as in metrics.jsonl."""
    shown = " ".join(f"{metric_tag(k, measured_on)} {v:.4g}" for k, v in record["metrics"].items()
                     if not k.startswith("naive"))
    wire = format_bytes(record["comm"]["wire_bytes_model"])
    ms = 1000 * statistics.median(round_times) if round_times else 0.0
    return f"round {record['round']:>4}/{num_rounds} | {shown} | train wire {wire} | {ms:.1f} ms/round"


def report_error(err: PflError, *, rank: int) -> int:
    """One line on stderr, no traceback. Rank-independent errors are printed by rank 0 only."""
    if rank == 0 or getattr(err, "rank_specific", False):
        print(f"pfl_dist: error: {err}", file=sys.stderr, flush=True)
    return err.exit_code


def read_saved_summary(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "summary.json").read_text()))


def share_inputs(cfg: Config, comm: Communicator) -> None:
    """Rank 0 hashes the user files the config reads (pfl_dist/inputs.py); the other ranks take its
    digests from one telemetry all-reduce (rank 0's bytes, zeros elsewhere) instead of reading the
    files again, so every rank has the same identity (the run dir of run.name=auto, the
    checkpoints' config). Nothing for a config without such files; counted also on one process,
    so the byte totals do not depend on the world size."""
    config = cfg.to_dict()
    keys = inputs.input_keys(config)
    if not keys:
        return
    size = inputs.SLOT_BYTES * len(keys)
    if comm.runtime.is_logging_rank:
        encoded = bytearray(inputs.encode_digests(cfg.inputs, keys))
        buffer = torch.frombuffer(encoded, dtype=torch.uint8).to(torch.int32)
    else:
        buffer = torch.zeros(size, dtype=torch.int32)
    shared = comm.all_reduce(buffer.to(comm.runtime.device), traffic=Traffic.TELEMETRY).cpu()
    if not comm.runtime.is_logging_rank:
        cfg.pin_inputs(inputs.decode_digests(bytes(shared.to(torch.uint8).tolist()), keys, inputs.config_paths(config)))
        check_result_paths(cfg.run_dir)  # run_session's check, deferred to here: the digests name an auto run dir


def run_session(cfg: Config, runtime: Runtime, stop: StopRequest, *, overwrite: bool = False) -> Trainer:
    """Prepare and lock the run dir (rank 0: pfl_dist/rundir.py), then build, train and close one
    run on an initialised runtime: the one run path, used by `pfl_dist.train`, the in-job sweep
    worker (many sessions on one runtime) and the tests. Returns the finished Trainer (its
    `summary`, and its state for tests).

    `stop` is the process's signal flag; a SIGTERM/SIGINT ends the run at the next round that
    every rank agrees on, with a checkpoint, by raising RunStopped.
    """
    cfg.set_world_size(runtime.world_size)
    if runtime.is_logging_rank or not inputs.input_keys(cfg.to_dict()):
        # before anything is created, read or allocated; the other ranks of a run that reads user
        # files check once they have rank 0's digests (Trainer), which name an auto run dir
        check_result_paths(cfg.run_dir)
    check_memory(cfg, world_size=runtime.world_size, rank=runtime.rank)
    prepared = prepare_run_dir(cfg, overwrite=overwrite) if runtime.is_logging_rank else None
    trainer: Trainer | None = None
    try:
        if prepared is not None:
            print_notes(prepared)
        trainer = Trainer(cfg, runtime, stop=stop, overwrite=overwrite)
        try:
            trainer.train()
        finally:
            trainer.close()
        if prepared is not None:
            prepared.commit()
    except (PflError, OSError):
        if prepared is not None:  # an --overwrite that failed gives the old results back
            prepared.rollback(started=trainer is not None)
        raise
    finally:
        if prepared is not None:
            prepared.release()
    return trainer


def run(cfg: Config, *, overwrite: bool = False) -> dict[str, Any]:
    """One run, the path `pfl_dist.train` and `pfl_dist.run` share: init, run_session, shutdown.

    The process group is torchrun's (WORLD_SIZE processes, formed here and destroyed at the end),
    none for a plain process, or one that already exists (its caller's: joined, and left alone at
    the end). The stop signals are caught only when this runs on the main thread
    (pfl_dist/signals.py); from another thread a run ends only when it completes or fails."""
    rank, world_size = planned_rank_and_size()
    cfg.set_world_size(world_size)
    if rank == 0:
        rundir.check_run_dir(cfg, overwrite=overwrite)  # a refusal before the group forms: one line, one process
    runtime = init_runtime(cfg)
    stop = StopRequest()
    stop.install()
    try:
        trainer = run_session(cfg, runtime, stop, overwrite=overwrite)
    except RunStopped:
        shutdown_runtime(runtime)  # every rank stopped at the same round, so the group ends cleanly
        raise
    finally:
        stop.uninstall()
    shutdown_runtime(runtime)
    summary = trainer.summary
    if runtime.is_logging_rank:
        if trainer.already_complete:
            print(f"already complete: {cfg.run_dir} holds this config's results; nothing was retrained "
                  "(another run.name, or --overwrite, trains again)")
        print_final(cfg, summary)
    return summary


def print_final(cfg: Config, summary: dict[str, Any]) -> None:
    comm = summary["comm"]
    final = ", ".join(f"{k} {v:.4g}" for k, v in summary["final"].items())
    print(f"final: {final}")
    wire_on = f", W={summary['world_size']}" if "world_size" in summary else ""  # wire bytes depend on W
    print(f"training bytes: wire (model{wire_on}) {format_bytes(comm['wire_bytes_model'])}, payload "
          f"{format_bytes(comm['payload_bytes'])}, uplink {format_bytes(comm['uplink_bytes'])}, downlink "
          f"{format_bytes(comm['downlink_bytes'])} in {comm['num_collectives']} collectives")
    print(f"run dir: {cfg.run_dir}  (summary.json, metrics.jsonl)")
    print(f"TensorBoard: {tool_command('tensorboard', module='tensorboard.main')} --logdir "
          f"{shlex.quote(str(Path(cfg.run.out_dir)))}")


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "ckpt").glob("round_*/shard_*.json"))


def main(argv: Sequence[str] | None = None) -> int:
    guard_output()  # `... | head -1` must not kill the run
    die_with_parent()  # a SIGKILLed torchrun leaves no workers behind
    args = parse_args(argv)
    cfg = None
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg, overwrite=args.overwrite)
    except PflError as err:
        return report_error(err, rank=env_rank())
    except ParentDied as err:
        print(f"pfl_dist: error: rank {env_rank()}: {err}; stopped", file=sys.stderr, flush=True)
        return err.exit_code
    except OSError as err:
        if cfg is None or not is_disk_error(err):
            raise
        return report_disk_error(err, cfg)
    except RunStopped as stopped:
        if env_rank() == 0:
            print(f"pfl_dist: {stopped}", file=sys.stderr, flush=True)
        return stopped.exit_code
    except RuntimeError as err:
        if cfg is None or not collective_failure(err):
            raise
        # A peer died, or hung past comm.timeout_s: one line; torchrun may then restart the group.
        print(f"pfl_dist: error: rank {env_rank()}: a collective failed (a peer died or hung; comm.timeout_s="
              f"{cfg.comm.timeout_s:g}): {failure_reason(err)}", file=sys.stderr, flush=True)
        return 1
    return 0


def report_disk_error(err: OSError, cfg: Config) -> int:
    """The run dir's filesystem failed mid-run: one line; 75 when a checkpoint can resume it."""
    resumable = has_checkpoint(cfg.run_dir)
    then = ("the newest checkpoint is kept: fix that and rerun the same command to resume" if resumable
            else "fix that and rerun")
    print(f"pfl_dist: error: rank {env_rank()}: cannot write the run's files: {os_error_text(err)}; {then}",
          file=sys.stderr, flush=True)
    return STOPPED_EXIT_CODE if resumable else 2


def cli() -> None:
    exit_process(main())


if __name__ == "__main__":
    cli()
