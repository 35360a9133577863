"""numba kernels: one module per cell (forward and backward side by side), plus the input
projection and the output layer. Kernels take plain arrays and write into caller-owned buffers."""
