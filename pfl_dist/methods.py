"""What each federated method is, without torch: its label, whether it communicates, what its
message is, whether algorithm.lam enters its updates, whether it needs a model with a body/head
split, whether it defines a global model that is evaluated on its own.

The algorithm classes (pfl_dist/algorithms/) take these facts from here (`Algorithm.info`), the
Trainer writes them into summary.json ("method"), and the sweep tables and figures read them
from there. This module is the only list of method names; it imports nothing heavy, so the
launcher, the config checks and the torch-free sweep driver can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# What a client's message is (`MethodInfo.message`). With a codec, a client sends Delta_i =
# sent_i - r (r: what the server holds, w_g by default), and this decides whether a compressor
# with error feedback may carry what it left out into the client's next message
# (pfl_dist/exchange/base.py `feedback_rule`; the table in docs/ARCHITECTURE.md).
INCREMENT = "increment"
"""A fresh update the client does not send again: FedAvg's w_i - w_g after local steps from w_g
(the client restarts from w_g next round), SCAFFOLD's y_i - x and c_i+ - c_i. What a codec leaves
out of it is lost unless a residual carries it to the client's next message (Stich et al. 2018)."""
STATE = "state"
"""The difference between state the client keeps and w_g: FedCLUP's w_i - w_g, with w_i trained on
from where it was. What a codec leaves out stays in w_i - w_g and is sent again in the client's
next message, so the kept state is its own memory; a residual would send it twice."""
MESSAGES = (INCREMENT, STATE)


@dataclass(frozen=True)
class MethodInfo:
    name: str  # algorithm.name
    label: str  # how tables and legends name it
    communicates: bool = True  # False: no training traffic at all (LocalTrain)
    message: str = INCREMENT  # what a client sends: INCREMENT or STATE (above)
    uses_lam: bool = False  # algorithm.lam enters the updates (shown in labels, HParams, results.csv)
    lam_symbol: str = "λ"  # how the label writes lam (FedProx's paper calls it mu)
    parameter_groups: bool = False  # needs a model with a body/head split (only the body is sent)
    global_model: bool = True  # w_g is a complete model whose accuracy is meaningful
    paper: str = ""
    # figures: its colour family, a matplotlib sequential colormap name or a '#rrggbb' base colour
    # (a light-to-dark map through it, pfl_dist/sweep/style.py); the 12 are told apart by
    # tests/unit/test_plot.py (CIELAB distance >= 30 between their single-curve colours)
    colors: str = "Greys"
    marker: str = "o"  # figures: its marker
    # a config key added when pfl_dist changed what this method computes at the key's default:
    # always part of its runs' identity (pfl_dist/rundir.py `LATER_KEYS`), so a run made under the
    # earlier rules is another run, never "already complete"
    results_changed_with: str = ""

    def __post_init__(self) -> None:
        assert self.message in MESSAGES, self.message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("fedclup", "FedCLUP", message=STATE, uses_lam=True, paper="Yu et al., ICML 2025", colors="Reds",
               marker="^"),
    MethodInfo("fedavg", "FedAvg", paper="McMahan et al., AISTATS 2017", colors="Blues", marker="o"),
    MethodInfo("fedprox", "FedProx", uses_lam=True, lam_symbol="μ", paper="Li et al., MLSys 2020",
               colors="#2ca02c", marker="D"),  # green
    MethodInfo("local", "LocalTrain", communicates=False, colors="Greys", marker="s"),
    # issue 21: the inner solve starts from w_g (was: the previous theta_i)
    MethodInfo("pfedme", "pFedMe", uses_lam=True, paper="Dinh et al., NeurIPS 2020", colors="#6a3d9a",  # purple
               marker="v", results_changed_with="algorithm.inner_warm_start"),
    # issue 21: personal_lr auto is 1/(L + lam) (was local_lr), added with client_weights
    MethodInfo("ditto", "Ditto", uses_lam=True, paper="Li et al., ICML 2021", colors="#ff7f00", marker="P",  # orange
               results_changed_with="algorithm.client_weights"),
    MethodInfo("apfl", "APFL", paper="Deng et al., 2020", colors="#ad017e", marker="X"),  # magenta
    MethodInfo("perfedavg", "Per-FedAvg (FO)", paper="Fallah et al., NeurIPS 2020", colors="#a6761d",  # ochre
               marker="*"),
    MethodInfo("fedrep", "FedRep", parameter_groups=True, global_model=False, paper="Collins et al., ICML 2021",
               colors="#17becf", marker="p"),  # cyan
    MethodInfo("fedper", "FedPer", parameter_groups=True, global_model=False, paper="Arivazhagan et al., 2019",
               colors="#1b9e77", marker="h"),  # teal
    MethodInfo("fedavg_ft", "FedAvg-FT", colors="#e78ac3", marker="d"),  # pink
    # issue 21: the server's means are plain means (were n_i-weighted)
    MethodInfo("scaffold", "SCAFFOLD", paper="Karimireddy et al., ICML 2020", colors="#bcbd22", marker="<",  # olive
               results_changed_with="algorithm.client_weights"),
)}

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_info(name: str) -> MethodInfo:
    return METHODS[name]


def info_from_summary(summary: dict[str, Any]) -> MethodInfo:
    """The method facts a finished run recorded (summary.json "method"); runs from before that
    key existed fall back to this table by name."""
    recorded = summary.get("method")
    if isinstance(recorded, dict):
        return MethodInfo(**{k: v for k, v in recorded.items() if k in MethodInfo.__dataclass_fields__})
    name = summary["config"]["algorithm"]["name"]
    return METHODS.get(name, MethodInfo(name, name))
