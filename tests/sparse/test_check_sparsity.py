import pytest

from leanformer.errors import UserError
from leanformer.sparse.base import check_sparsity


@pytest.mark.parametrize("bad", ["abc", [0.5], object()])
def test_a_sparsity_that_is_not_a_number_is_named(bad):
    with pytest.raises(UserError, match=r"^sparsity must be a number in \[0, 1\)"):
        check_sparsity(bad)


def test_valid_sparsities_pass():
    assert check_sparsity("0.5") == 0.5 and check_sparsity(None) is None and check_sparsity(0) == 0.0
    with pytest.raises(UserError, match="sparsity must be in"):
        check_sparsity(1.0)
