"""The k1/k2 truncated-BPTT scheduler (Sutskever 2013, section 2.8.6; Williams & Peng's
BPTT(h; h') with h = k2, h' = k1).

Every k1 steps there is one update. Its loss is the mean of the newest k1 predictions, each
prediction counted in exactly one update. The gradient flows from those losses back through the
recurrence to step t-k2+1; the state entering that range is a constant.

The stack keeps a window of W = max(k1, k2) steps. Each update runs the k1 new steps into the
last k1 slots of the window, then the window slides left by k1. With k2 > k1 the older W-k1
steps are the activations kept from earlier updates, so the forward pass is never re-run; the
cost is memory for W steps of activations, and those kept activations were computed with the
parameters of their own update (one to ceil(k2/k1)-1 optimizer steps old). With k2 < k1 the
losses of the first k1-k2 new steps reach only the output layer.

Per update, in window slots (state slot s holds the state before step s):
    new and counted steps   [W-k1, W)
    gradient range          [g0, W) with g0 = max(W-k2, W-filled)
"""
import numpy as np


class Scheduler:
    def __init__(self, k1: int, k2: int):
        if k1 < 1 or k2 < 1:
            raise ValueError(f"k1 and k2 must be at least 1 (got k1={k1}, k2={k2})")
        self.k1, self.k2 = k1, k2
        self.window = max(k1, k2)
        self.filled = 0  # valid steps in the window; fewer than W only right after a reset
        self.c0 = self.window - k1  # first counted step
        self.g0 = self.c0  # first step the gradient reaches (set by each update)

    def reset(self, stack, state=None):
        """Start a fresh stretch of text: the next update starts from `state` (zeros if None)."""
        if state is None:
            state = [[np.zeros_like(a) for a in layer] for layer in stack.get_state(self.c0)]
        stack.set_state(self.c0, state)
        self.filled = 0

    def inputs(self, stack):
        """Where the caller writes the k1 new input and target ids: two (k1, B) views."""
        return stack.ids[self.c0 :], stack.targets[self.c0 :]

    def update(self, stack, params, grads, rng=None):
        """Forward the k1 new steps, then the truncated gradient into `grads` (zeroed first).
        Returns the sum of the counted losses in nats; the gradient is of their mean over the
        whole batch (stack.total streams), of which the stack may hold a share."""
        W, k1 = self.window, self.k1
        stack.forward(params, self.c0, W, rng)
        self.filled = min(self.filled + k1, W)
        self.g0 = max(W - self.k2, W - self.filled)
        grads[:] = 0.0
        loss = stack.output_grad(params, grads, self.c0, W, 1.0 / (k1 * stack.total))
        stack.backward(params, grads, self.g0, W)
        return loss

    def advance(self, stack):
        """After the optimizer step: slide the window so the next k1 steps can follow."""
        stack.shift(self.k1)

    def fresh_loss(self, stack, params):
        """The sum of the last update's counted losses, the k1 new steps run again from a zero
        state (without dropout): whether the state carried into the update made them NaN or
        Inf (Trainer._diverged). It overwrites the window's state and activations."""
        self.reset(stack)
        stack.forward(params, self.c0, self.window)
        return stack.loss(params, self.c0, self.window)

    def objective(self, stack, params):
        """The truncated objective of the last update, recomputed with `params`: the mean counted
        loss with the state in slot g0 (and the top states before it) held fixed. Used by
        gradcheck; it overwrites the activations of [g0, W)."""
        W = self.window
        stack.forward(params, self.g0, W)
        return stack.loss(params, self.c0, W) / (self.k1 * stack.total)  # as update() scales it
