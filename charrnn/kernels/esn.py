"""Echo-state network (Jaeger 2001): a fixed random reservoir, only the readout learns.

    k_t = tanh(xproj_t + h_{t-1} @ Wh)     xproj_t = W_x x_t + b
    h_t = (1 - a) * h_{t-1} + a * k_t      a: the leak rate (--leak; 1 means no leak)

These are the leaky unit's equations (leaky.py), and the cell runs that module's kernels and
sampling step; what makes it an echo-state network is its tensors: W_x, W_h and b are drawn
once and frozen, W_h rescaled to the spectral radius --spectral-radius (below 1 by default:
slightly contractive, so that the state forgets where it started, the echo-state property), and
the rate a is frozen too. Only the output layer (the readout) trains, so a training update runs
no backward pass through the recurrence at all (Stack.backward), and the output layer leaves out
the gradient with respect to the states, which nothing would read (Stack.output_grad): a third
of its products. Both are still there for gradflow, which asks how gradients would decay
through the reservoir.
"""
import numpy as np

from ..cells import Tensor
from .leaky import LeakyCell

INPUT_SCALE = 1.0  # W_x ~ U(-s, s) for one-hot input (one row is the whole projection)
BIAS_SCALE = 0.2


class ESNCell(LeakyCell):
    name = "esn"
    checked_options = ((),)  # (not the leaky cell's: --tau is no option of an echo-state network's)

    def param_shapes(self, n_in, H, spec):
        return [Tensor("Wx", (n_in, H), False), Tensor("Wh", (H, H), False), Tensor("b", (H,), False),
                Tensor("a", (H,), False)]

    def init(self, p, H, rng, spec):
        n_in = p["Wx"].shape[0]
        # a layer above the first sums n_in inputs of size ~1: scale them to keep tanh unsaturated
        scale = INPUT_SCALE if n_in == spec.vocab_size else INPUT_SCALE / np.sqrt(n_in)
        p["Wx"][...] = rng.uniform(-scale, scale, p["Wx"].shape)
        p["b"][...] = rng.uniform(-BIAS_SCALE, BIAS_SCALE, H)
        W = rng.standard_normal((H, H))
        rho = np.max(np.abs(np.linalg.eigvals(W)))
        p["Wh"][...] = W * (spec.option("spectral_radius") / rho) if rho > 0 else 0.0
        p["a"][...] = spec.option("leak")

    def update_flops(self, H):
        return 2 * H * H  # the forward product only: no backward through the reservoir


CELL = ESNCell()
