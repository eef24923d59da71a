from __future__ import annotations

import os
from typing import Any

import pytest

# Every torchrun the tests start must survive an elastic restart (docs/RELIABILITY.md).
os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")

# `make test` runs the suite on pytest-xdist workers (`-n 2`; docs/PERFORMANCE.md "Test suite
# wall time"). Each group below runs whole on one worker, its tests in collection order:
# - every Docker test (one engine, one image build);
# - the Slurm tests (one private cluster; the test waits on its daemons and jobs);
# - every test that builds network namespaces (one 10.77.0.0/24 cluster at a time, and the
#   clean-up tests look at every pflnet- namespace);
# - the tests that read the session's shared torchrun jobs (tests/distributed/conftest.py), so
#   that each job runs once;
# - any other module, so that a module-scoped fixture is built once.
GROUPS = {
    "tests/integration/test_docker_compose.py": "docker",
    "tests/integration/test_slurm.py": "slurm",
    "tests/integration/test_netem.py": "netns",
    "tests/integration/test_compose_cluster.py": "netns",
    "tests/distributed/test_codecs_distributed.py": "shared-jobs",
    "tests/distributed/test_algorithms_distributed.py": "shared-jobs",
    "tests/distributed/test_engine_distributed.py": "shared-jobs",
    "tests/distributed/test_multinode.py": "shared-jobs",
}
# Handed out first: the Docker image build (minutes, mostly waiting on I/O) then overlaps the rest
# of the suite; then the long groups, so that short ones fill the end.
FIRST = ("docker", "slurm", "shared-jobs", "netns")


def group_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return GROUPS.get(module, module)


def _order(item: pytest.Item) -> int:
    group = group_of(item.nodeid)
    if group in FIRST:
        return FIRST.index(group)
    if any(item.get_closest_marker(m) for m in ("slow", "integration", "distributed")):
        return len(FIRST)
    return len(FIRST) + 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_order)  # stable: collection order within each class


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load-scope scheduling with `group_of` as the scope, handed out in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep `_order`'s order, not largest first

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)
