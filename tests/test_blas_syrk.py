"""The BLAS symmetric rank-k update against torch's general product."""

import pytest
import torch

from ntk_lab.kernels import blas_syrk

# float32: a sum of K = 3000 products, each rounded at 2^-24, against the same sum in another
# order — K·2^-24 ≈ 2e-4 worst case, ~1e-5 typical; float64: the same at 2^-53.
RTOL = {torch.float32: 2e-4, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upper_triangle_matches_the_general_product(dtype):
    if not blas_syrk.syrk_available(torch.zeros(1, dtype=dtype)):
        pytest.skip("this torch build's BLAS exports no syrk (the caller uses row strips)")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(37, 3000, dtype=dtype, generator=g)
    before = torch.randn(37, 37, dtype=dtype, generator=g)
    c = before.clone()
    blas_syrk.add_upper_gram(c, a, 0.25)
    expected = before + 0.25 * a @ a.T
    upper = torch.ones(37, 37, dtype=torch.bool).triu()
    assert torch.allclose(c[upper], expected[upper], rtol=RTOL[dtype], atol=RTOL[dtype] * 3000 ** 0.5)
    assert torch.equal(c[~upper], before[~upper])  # below the diagonal: untouched
    # a non-contiguous a (a transposed view) is copied, not misread
    c2 = before.clone()
    blas_syrk.add_upper_gram(c2, a.T.contiguous().T, 0.25)
    assert torch.equal(c2, c)


def test_wrong_shapes_are_refused_not_misread():
    c = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="add_upper_gram"):
        blas_syrk.add_upper_gram(c, torch.zeros(4, 3), 1.0)


def test_unsupported_dtype_is_not_available():
    assert not blas_syrk.syrk_available(torch.zeros(2, 2, dtype=torch.float16))
