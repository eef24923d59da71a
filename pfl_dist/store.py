"""Per-client state: rows are declared (`Row`), and one `ClientStore` per rank owns them all.

Three parts of a run keep a row per client, each under its namespace:
- `algo/`: the algorithm's rows (`Algorithm.client_rows`: FedCLUP's local model, Ditto's
  personal model, SCAFFOLD's c_i, APFL's alpha_i);
- `codec/`: an error-feedback codec's residual e_i (pfl_dist/exchange/base.py `ErrorFeedback`);
- `engine/`: the Trainer's count of local updates per client.

Nobody allocates them by hand: each part declares its rows (name, default, shape, dtype) and
reads and writes them by client row through the store. A row never written reads its default
("global": a copy of the initial w_g; "zeros"; or a constant such as APFL's alpha_0).

The checkpoint's "clients" section is `state_dict()`: one (k, ...) tensor per row, named by the
row's bare name (`local_models`, `codec_residual`, `update_counts`, the names checkpoints always
had, so older checkpoints load), and pfl_dist/checkpoint.py re-shards every one by client id with
no code per algorithm. Bare names are therefore unique across namespaces (`declare` refuses a
clash).

`DenseStore` is the only back-end: every row of every client of this rank in memory, as before.
The interface (`declare`, `read`, `write`, `rows`, `state_dict`, `load_state_dict`) is what a lazy
back-end (a bounded cache spilling to disk, pfl-research's AbstractUserStateStorage) would provide;
`rows` (every row of a namespace at once, for evaluation and end-of-round callbacks) is the one
call such a back-end would have to stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from pfl_dist.errors import ConfigError

NAMESPACES = ("algo", "codec", "engine")
Default = Literal["global", "zeros"] | float


@dataclass(frozen=True)
class Row:
    """One per-client row: its name, its value before a client's first write, and its shape.

    `default`: "global" (a copy of the initial w_g; the shape is the model's), "zeros", or a
    number (every entry that constant, e.g. APFL's alpha_0). `shape`: one client's row, None for
    the model's (P,); () is one number per client. `dtype`: None for the model's."""

    name: str
    default: Default = "zeros"
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"per-client row name {self.name!r} must be an identifier")
        if isinstance(self.default, str) and self.default not in ("global", "zeros"):
            raise ConfigError(f"per-client row {self.name!r}: default must be 'global', 'zeros' or a number, "
                              f"got {self.default!r}")
        if self.default == "global" and self.shape is not None:
            raise ConfigError(f"per-client row {self.name!r}: default 'global' has the model's shape; drop shape")


class ClientStore:
    """Every per-client row of this rank's `num_clients` clients, keyed "namespace/name"."""

    def __init__(self, num_clients: int, *, global_model: torch.Tensor) -> None:
        self.num_clients = num_clients
        self.global_model = global_model.detach().clone()  # what "global" rows start from
        self.declared: dict[str, Row] = {}  # "namespace/name" -> its declaration

    def declare(self, namespace: str, rows: Iterable[Row]) -> None:
        """Add rows under `namespace`; a bare name already declared (in any namespace) is refused."""
        if namespace not in NAMESPACES:
            raise ValueError(f"unknown client-store namespace {namespace!r} (one of {', '.join(NAMESPACES)})")
        for row in rows:
            clash = next((key for key in self.declared if key.split("/", 1)[1] == row.name), None)
            if clash is not None:
                raise ConfigError(f"per-client row {namespace}/{row.name}: the name {row.name!r} is already "
                                  f"{clash} (checkpoints name rows by their bare name)")
            self.declared[f"{namespace}/{row.name}"] = row
            self._allocate(f"{namespace}/{row.name}", row)

    def names(self, namespace: str) -> list[str]:
        """The bare names declared under `namespace`, in declaration order."""
        return [key.split("/", 1)[1] for key in self.declared if key.startswith(namespace + "/")]

    def default(self, row: Row, num_clients: int) -> torch.Tensor:
        """(num_clients, *shape): `row` as it reads before any write."""
        model = self.global_model
        if row.default == "global":
            return model.repeat(num_clients, 1)
        shape = (num_clients, *((len(model),) if row.shape is None else row.shape))
        dtype = model.dtype if row.dtype is None else row.dtype
        fill = 0.0 if row.default == "zeros" else float(row.default)
        return torch.full(shape, fill, dtype=dtype, device=model.device)

    # --- the back-end's part ---------------------------------------------------------------

    def _allocate(self, key: str, row: Row) -> None:
        raise NotImplementedError

    def read(self, namespace: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: (len(rows), ...)}: a copy of the given clients' rows of every row of `namespace`."""
        raise NotImplementedError

    def write(self, namespace: str, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """Set the given clients' rows of the named rows of `namespace` (others are unchanged)."""
        raise NotImplementedError

    def rows(self, namespace: str) -> dict[str, torch.Tensor]:
        """{name: (num_clients, ...)}: every client's rows of `namespace`, read-only."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{bare name: (num_clients, ...) on the CPU}: the checkpoint's "clients" section."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load every declared row from `state` (the checkpoint's "clients" section, re-sharded to
        this rank's clients). Names `state` has beyond the declared ones are the caller's to judge
        (`undeclared`)."""
        raise NotImplementedError

    def undeclared(self, names: Iterable[str]) -> list[str]:
        """The names among `names` that no namespace declares, sorted."""
        bare = {key.split("/", 1)[1] for key in self.declared}
        return sorted(set(names) - bare)


class DenseStore(ClientStore):
    """Every row of every client in memory: one (num_clients, ...) tensor per declared row."""

    def __init__(self, num_clients: int, *, global_model: torch.Tensor) -> None:
        super().__init__(num_clients, global_model=global_model)
        self.tensors: dict[str, torch.Tensor] = {}

    def _allocate(self, key: str, row: Row) -> None:
        self.tensors[key] = self.default(row, self.num_clients)

    def read(self, namespace: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.tensors[f"{namespace}/{name}"][rows] for name in self.names(namespace)}

    def write(self, namespace: str, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            key = f"{namespace}/{name}"
            if key not in self.tensors:
                raise KeyError(f"per-client row {key} was not declared (declared: {', '.join(self.tensors)})")
            self.tensors[key][rows] = value

    def rows(self, namespace: str) -> dict[str, torch.Tensor]:
        return {name: self.tensors[f"{namespace}/{name}"] for name in self.names(namespace)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key.split("/", 1)[1]: tensor.cpu() for key, tensor in self.tensors.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for key, tensor in self.tensors.items():
            name = key.split("/", 1)[1]
            if name not in state:
                raise ConfigError(f"cannot resume: the checkpoint has no per-client row {name!r}, which this run "
                                  f"declares ({key}); use another run.name or --overwrite")
            saved = state[name]
            if saved.shape != tensor.shape:
                raise ConfigError(f"cannot resume: per-client row {key} is {tuple(saved.shape)} in the checkpoint "
                                  f"and {tuple(tensor.shape)} in this run; use another run.name or --overwrite")
            self.tensors[key] = saved.to(device=tensor.device, dtype=tensor.dtype)
