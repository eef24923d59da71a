"""Lazy client data (`data.lazy`): a client's arrays exist only while it is sampled or evaluated.

Which data kinds can be lazy is a fact of their task registry entry (`TaskEntry.lazy`,
pfl_dist/tasks/__init__.py: how the task makes one client, as the console says it):
- synthetic: a client's data is a pure function of (seed, client id, num_clients)
  (pfl_dist/data/synthetic.py), and generating any subset of clients gives each client the same
  bits as generating them all: the task (pfl_dist/tasks/synthetic.py) generates it;
- client_files: the task (pfl_dist/tasks/client_files.py) reads the client's file, splits it
  (held-out and validation rows, from (seed, client id) alone) and scales it (the feature scale
  is per client, of its own training rows: no other client's rows are needed). Start-up reads no
  number: it counts each of the rank's clients' rows (a CSV's lines, without parsing; an .npz's
  header) for the sample counts and the padded length, and memory-maps the true models' file.
  The launcher's preflight still reads and checks every file once (one at a time), so a bad
  file stops the launch in one line as before; a file that changes during the run is one line
  when its client is read.
- the image kinds (mnist, fashion_mnist, mnist5k, cifar10, leaf; pfl_dist/tasks/images.py): the
  partition (client -> indices into the dataset), the labels, counts, class masks and naive
  baseline are made at start-up (label arithmetic); a client's images are gathered from the
  dataset and padded when it is sampled or evaluated. The dataset's arrays themselves stay
  loaded once per process, as eagerly (the official test set, w_g's evaluation, needs them).
- plug-in datasets (`data.kind: package.module:factory`, pfl_dist/tasks/dataset.py), through the
  dataset's optional `client_size(i) -> (n_train, n_test)` (SIZE_MEMBER): start-up calls it once
  per hosted client for the sample counts and the padded lengths, and `client(i)` for none; a
  client's arrays come from `client(i)` when it is sampled or evaluated (checked against its
  client_size: one line if they differ), labels and class masks included. The launcher's
  preflight asks for client 0 only. Without client_size, data.lazy=true is one line naming it
  and `auto` stays eager (`dataset_has_sizes` calls the factory once, cached, to look).
Instead of every client of a rank at start-up, a lazy task makes a client the first time a round
samples it or an evaluation measures it, and keeps it in a `ClientCache`:
- the evaluation cohort's members on this rank (train.eval_clients = N) are pinned: measured at
  every evaluation, made once, kept for the run (at most N clients);
- any other client goes through an LRU of `cache_capacity` clients, derived from the config (no
  key): the clients one round samples (algorithm.sample_fraction x data.num_clients), so that a
  round's clients are made once per round; an evicted client is dropped and made again if
  sampled again.
So a rank holds at most (sampled per round + cohort) clients' data, whatever data.num_clients.
The task's tensors are `LazyRows` (pfl_dist/tasks/lazy_rows.py): each client's tensors are its
row of the eager tensors (padded to the same length), so the solver and the metrics see the same
tensors in the same order as the eager path: every number of a run is bit for bit the same
(tests/unit/test_lazy_data.py, tests/unit/test_lazy_client_files.py,
tests/unit/test_lazy_dataset.py), which is why data.lazy is no part of the run identity
(pfl_dist/rundir.py IGNORED_KEYS).

The price is time: a round makes its sampled clients again (the LRU rarely holds them when few
of many are sampled), where eager data pays that once per client at start-up.

Evaluating every client (train.eval_clients all) would materialize every client at each
evaluation: lazy data needs a cohort, and `data.lazy=true` without one is refused in one line,
as is `true` on a kind that cannot be lazy. `auto` is lazy for a kind that can be, from
LAZY_FROM clients on, when the evaluation is on a cohort (every run before the key had fewer
clients or evaluated all: they stay eager); below that eager start-up costs little (10^4
synthetic clients: ~0.1 GB, ~1 s); another kind, or a plug-in dataset without client_size, is
always eager.

algorithm.smoothness=auto, max_i L_i over every client, stays exact with lazy data: the rank's
clients are made once at start-up in blocks of 256, each block's bound taken and the block
dropped (O(block) memory, O(clients) time; the same L bit for bit). A number for
algorithm.smoothness skips that pass, and start-up is then O(sampled + cohort) clients made
(client_files: plus the row counts; plug-in datasets: plus one client_size call per client).

No torch here: the config check (pfl_dist/tasks/__init__.py) and the memory estimate
(pfl_dist/resources.py) read it before any process starts.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from pfl_dist.errors import ConfigError
from pfl_dist.sampling import eval_cohort, eval_cohort_size, num_sampled

if TYPE_CHECKING:
    from pfl_dist.config import Config

SIZE_MEMBER = "client_size"  # a federated dataset's optional member for lazy data: client_size(i) -> (n_train, n_test)
LAZY_FROM = 100_000  # data.lazy=auto: lazy from this many clients on (with an evaluation cohort)

V = TypeVar("V")


def lazy_client(kind: str) -> str | None:
    """How a client of data kind `kind` is materialized lazily ("generated", "read from its file",
    ...), its task registry entry's `lazy` (pfl_dist/tasks/__init__.py); None: it cannot be."""
    from pfl_dist.tasks import task_entry  # the registry imports this module

    return task_entry(kind).lazy


def lazy_kinds() -> list[str]:
    """The built-in data kinds whose clients can be materialized lazily."""
    from pfl_dist.tasks import TASKS

    return [kind for kind, entry in TASKS.items() if entry.lazy is not None]


def lazy_data(cfg: Config) -> bool:
    """Whether the config's clients are materialized lazily (data.lazy with auto resolved)."""
    data = cfg.data
    if data.lazy != "auto":
        return bool(data.lazy)
    return (lazy_client(data.kind) is not None and data.num_clients >= LAZY_FROM
            and eval_cohort_size(cfg.train.eval_clients, data.num_clients) is not None
            and dataset_has_sizes(cfg))


def dataset_has_sizes(cfg: Config) -> bool:
    """Whether the config's data can tell a client's row counts without its arrays: every kind
    with a task of its own can; a federated dataset (pfl_dist/tasks/dataset.py) if it has the
    optional `client_size(i)` (so data.lazy=auto calls the factory once to look; a dataset that
    fails to load answers False, and the eager task then reports why in one line)."""
    from pfl_dist.tasks import task_entry

    factory = task_entry(cfg.data.kind).factory
    if factory is None:
        return True
    return _has_client_size(factory, json.dumps(cfg.data.params, sort_keys=True, default=repr))


@functools.lru_cache(maxsize=8)
def _has_client_size(factory: str, params: str) -> bool:
    from pfl_dist.plugins import load, parse

    try:
        dataset = load(parse(factory, key="data.kind"), key="data.kind")(**json.loads(params))
        return callable(getattr(dataset, SIZE_MEMBER, None))
    except Exception:  # the eager path's load_dataset names the problem in one line
        return False


def check_lazy(cfg: Config) -> None:
    """data.lazy=true on a config that cannot run lazily: ConfigError, one line."""
    data = cfg.data
    if data.lazy is not True:
        return
    if lazy_client(data.kind) is None:
        raise ConfigError(f"data.lazy=true is for data.kind {' or '.join(lazy_kinds())}, not {data.kind!r}: "
                          "remove data.lazy")
    if eval_cohort_size(cfg.train.eval_clients, data.num_clients) is None:
        raise ConfigError(f"data.lazy=true needs an evaluation cohort: train.eval_clients={cfg.train.eval_clients} "
                          f"evaluates all {data.num_clients} clients, which materializes every client; set "
                          f"train.eval_clients to a number below data.num_clients, or data.lazy=false")


def cache_capacity(cfg: Config) -> int:
    """The LRU's size in clients: what one round samples (the cohort is pinned besides)."""
    return num_sampled(cfg.data.num_clients, cfg.algorithm.sample_fraction)


def resident_clients(cfg: Config, hosted: int) -> int:
    """At most how many of a rank's `hosted` clients hold data at once: all of them eagerly; lazily
    the LRU plus the pinned cohort (pfl_dist/resources.py counts these)."""
    if not lazy_data(cfg):
        return hosted
    cohort = eval_cohort_size(cfg.train.eval_clients, cfg.data.num_clients) or 0
    return min(hosted, cache_capacity(cfg) + cohort)


def cohort_members(cfg: Config, client_ids: range) -> list[int]:
    """The evaluation cohort's members among `client_ids` (a rank's: pinned in its cache)."""
    data = cfg.data
    size = eval_cohort_size(cfg.train.eval_clients, data.num_clients)
    if size is None:
        return []
    cohort = eval_cohort(seed=cfg.run.seed, num_clients=data.num_clients, size=size)
    return [int(i) for i in cohort if client_ids.start <= i < client_ids.stop]


def client_cache(cfg: Config, client_ids: range, make: Callable[[list[int]], list[V]]) -> ClientCache[V]:
    """A rank's cache of the clients `client_ids`: an LRU of `cache_capacity`, the cohort pinned."""
    return ClientCache(make, capacity=cache_capacity(cfg), pinned=cohort_members(cfg, client_ids))


class ClientCache(Generic[V]):
    """Materialized clients by global id: `pinned` ids kept once made, the others in an LRU of
    `capacity`. `make(ids)` returns the clients of `ids` in order; `materialized` counts every
    client it made (tests check that start-up makes none and that eviction bounds what is kept)."""

    def __init__(self, make: Callable[[list[int]], list[V]], *, capacity: int, pinned: Iterable[int] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"a client cache holds at least 1 client, got capacity {capacity}")
        self._make = make
        self.capacity = capacity
        self.pinned_ids = frozenset(pinned)
        self._pinned: dict[int, V] = {}
        self._lru: OrderedDict[int, V] = OrderedDict()
        self.materialized = 0

    def __len__(self) -> int:
        """Clients held now (pinned and LRU)."""
        return len(self._pinned) + len(self._lru)

    def get(self, ids: Sequence[int]) -> list[V]:
        """The clients of `ids` (distinct), made once if not held; the LRU then keeps the most
        recently used `capacity` of the unpinned ones."""
        missing = [i for i in ids if i not in self._pinned and i not in self._lru]
        made = dict(zip(missing, self._make(missing), strict=True)) if missing else {}
        self.materialized += len(made)
        result = []
        for i in ids:
            if i in made:
                value = made[i]
                if i in self.pinned_ids:
                    self._pinned[i] = value
                else:
                    self._lru[i] = value
            elif i in self._pinned:
                value = self._pinned[i]
            else:
                value = self._lru[i]
                self._lru.move_to_end(i)
            result.append(value)
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return result
