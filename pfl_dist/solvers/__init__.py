"""Local solvers: proximal steps on L_i(w) + (lam/2)||w - w_anchor||^2, vectorized over clients.

- `linear.prox_gd_linear_softmax`: full-batch GD with kernels specialised to the linear softmax
  model on unpadded (k, n, d) data (the paper's synthetic solver).
- `padded.prox_sgd_padded` / `padded.prox_gd_padded`: minibatch SGD / full-batch GD for any model
  with a `weighted_grad`, on clients whose data is padded to a common length (the image solver).
"""
