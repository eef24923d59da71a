"""pfl_dist: distributed personalized federated learning (FedCLUP) on torchrun.

`pfl_dist.run` and `pfl_dist.RunResult` (pfl_dist/api.py) are imported on first use: importing the
package stays torch-free, as the launcher and the sweep driver need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pfl_dist.api import RunResult, run

__version__ = "0.1.0"
__all__ = ["RunResult", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pfl_dist import api

        return getattr(api, name)
    raise AttributeError(f"module 'pfl_dist' has no attribute '{name}'")
