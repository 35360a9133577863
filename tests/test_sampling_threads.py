"""`charrnn sample` runs its products on two BLAS threads; the text must still depend only on
the seed, and the logits must agree with the one-thread path to rounding."""
import numpy as np

from charrnn.corpus import Vocab
from charrnn.model import ModelSpec, init_params
from charrnn.sampling import SAMPLE_THREADS, Sampler, sample_text


def test_two_thread_sampling_is_reproducible_and_close_to_one_thread():
    vocab = Vocab("abcdefgh \n")
    spec = ModelSpec("lstm", vocab.size, 256, 2)
    params = init_params(spec, np.random.default_rng(0))
    texts = [sample_text(Sampler(spec, params, threads=SAMPLE_THREADS), vocab, length=300, seed=5)[0]
             for _ in range(2)]
    assert texts[0] == texts[1] and len(texts[0]) == 300
    ids = vocab.encode("abc defg\nhab cd" * 10)
    two = Sampler(spec, params, threads=2).feed(ids, keep_logits=True)
    one = Sampler(spec, params).feed(ids, keep_logits=True)
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5)
