"""charrnn: character-level RNN, LSTM and GRU language models trained on the CPU.

    import charrnn
    m = charrnn.load("checkpoints/RUN")    # a run folder or a .npz checkpoint
    print(m.sample(length=200, seed=1))

The API lives in charrnn/api.py. Importing the package imports nothing heavy: numpy, numba and
the kernels come with the first use of `charrnn.load` and its neighbours (module __getattr__).
"""
__version__ = "0.1.0"

# what `charrnn.NAME` gives, and the module it comes from
_LAZY = {"load": "api", "TrainedModel": "api", "Evaluation": "api", "UnknownCharacters": "api",
         "CharrnnError": "errors"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})
