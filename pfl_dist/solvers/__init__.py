"""Client-maths kernels below the one client-maths path (pfl_dist/algorithms/base.py: `prox_step`,
`local_sgd`):

- `linear.prox_gd_linear_softmax`: full-batch proximal GD fused for the linear softmax model on
  unpadded (k, n, d) data, the fast path `local_sgd(..., fused=True)` dispatches to through
  `Task.fused_local_phase` (the paper's synthetic solver).
- `padded`: the minibatch schedule of clients padded to a common length (`plan_epoch`,
  `full_batch_weights`), which `Task.batches` draws the generic loop's batches from.
"""
