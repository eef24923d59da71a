"""The synthetic local solver alone: CPU us per GD step, the engine's first loop vs today's kernels.

    python benchmarks/linear_solver.py [--clients 5,50,500,5000] [--classes 2] [--repeats 5]

One process, 1 thread (what each of 2 ranks gets on these machines), K=150 proximal GD steps
of softmax regression on k stacked clients (n=200, d=10), lam=0.25. Compared, interleaved:
- first loop: the engine before issue 6 (`LinearSoftmax.loss_and_grad` each step: sample-major
  logits, last-dim softmax, scatter, two new tensors per step), the definition the float64
  reference kernels reproduce bit for bit;
- now: `pfl_dist.solvers.linear.prox_gd_linear_softmax` (float32: class-major kernels in
  cache-sized chunks; float64: the reference kernels with preallocated buffers).
CPU time of this process (`time.process_time`), median of `--repeats`: on a shared machine
wall time mostly measures the other jobs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _common import machine_line, median, print_table

from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.solvers.linear import prox_gd_linear_softmax

STEPS = 150


def first_loop(model: LinearSoftmax, models: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
               anchor: torch.Tensor, lam: float, lr: float, num_steps: int) -> torch.Tensor:
    for _ in range(num_steps):
        _, grad = model.loss_and_grad(models, x, y, need_loss=False)
        grad.add_(models - anchor, alpha=lam)
        models.sub_(grad, alpha=lr)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="5,50,500,5000")
    parser.add_argument("--first-loop-max", type=int, default=500, help="skip the first loop above this many "
                        "clients (it takes minutes there)")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"linear_solver: {machine_line()}, 1 thread, K={STEPS}, n=200, d=10, C={args.classes}")
    solvers: dict[str, Callable[..., torch.Tensor]] = {"first loop": first_loop, "now": prox_gd_linear_softmax}
    rows = []
    for dtype in (torch.float32, torch.float64):
        for k in (int(c) for c in args.clients.split(",")):
            g = torch.Generator().manual_seed(0)
            model = LinearSoftmax(10, args.classes, bias=False)
            x = torch.randn(k, 200, 10, generator=g, dtype=dtype)
            y = torch.randint(0, args.classes, (k, 200), generator=g)
            w0 = torch.randn(k, model.num_params, generator=g, dtype=dtype)
            anchor = torch.randn(model.num_params, generator=g, dtype=dtype)
            times: dict[str, list[float]] = {name: [] for name in solvers}
            active = solvers if k <= args.first_loop_max else {"now": solvers["now"]}
            for _ in range(args.repeats):
                for name, solve in active.items():
                    started = time.process_time()
                    solve(model, w0.clone(), x, y, anchor=anchor, lam=0.25, lr=0.02, num_steps=STEPS)
                    times[name].append((time.process_time() - started) / STEPS)
            first, now = median(times["first loop"]), median(times["now"])
            rows.append([str(dtype).removeprefix("torch."), k, 1e6 * first if times["first loop"] else "-", 1e6 * now,
                         first / now if times["first loop"] else "-", 1e3 * now * STEPS, 1e6 * now / k])
    print_table(["dtype", "clients", "first loop us/step", "now us/step", "speed-up", "now ms/round (K=150)",
                 "now us/client-step"], rows)


if __name__ == "__main__":
    main()
