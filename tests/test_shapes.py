import math

import pytest

from tensorlstm.errors import UserError
from tensorlstm.tensor.shapes import check_modes, factorize, gate_modes


@pytest.mark.parametrize(
    "n,d", [(57600, 4), (256, 4), (512, 4), (1536, 3), (1024, 5), (7, 2), (1, 3), (360, 2)]
)
def test_factorize_product_and_order(n, d):
    modes = factorize(n, d)
    assert len(modes) == d
    assert math.prod(modes) == n
    assert modes == sorted(modes, reverse=True)


def test_factorize_is_balanced():
    assert factorize(256, 4) == [4, 4, 4, 4]
    assert factorize(512, 4) == [8, 4, 4, 4]
    assert factorize(57600, 2) == [240, 240]
    # minimal sum among all factorizations into 4 modes
    best = factorize(57600, 4)
    assert sum(best) == 62 and max(best) / min(best) < 1.1


def test_factorize_bad_input():
    with pytest.raises(UserError):
        factorize(0, 2)
    with pytest.raises(UserError):
        factorize(10, 0)


def test_check_modes_returns_new_list():
    modes = (8, 20, 20, 18)
    out = check_modes(modes, 57600, "in_modes")
    assert out == [8, 20, 20, 18] and isinstance(out, list)
    lst = [4, 4]
    assert check_modes(lst, 16, "x") is not lst


def test_check_modes_error_proposes_fix():
    with pytest.raises(UserError) as e:
        check_modes([8, 20, 20, 17], 57600, "in_modes")
    msg = str(e.value)
    assert "8x20x20x17 multiply to 54400, not 57600" in msg
    assert "8x20x20x18" in msg and "in_modes=[8,20,20,18]" in msg
    assert "\n" not in msg


def test_check_modes_error_falls_back_to_factorize():
    with pytest.raises(UserError) as e:
        check_modes([7, 7], 57600, "hidden_modes")
    assert "try 240x240" in str(e.value)


@pytest.mark.parametrize("bad", [[0, 4], [2.5, 4], ["a"], []])
def test_check_modes_rejects_non_positive(bad):
    with pytest.raises(UserError):
        check_modes(bad, 16, "in_modes")


def test_gate_modes_first_last_and_no_mutation():
    hidden = [4, 4, 4, 4]
    assert gate_modes(hidden, 4, "first") == [16, 4, 4, 4]
    assert gate_modes(hidden, 3, "last") == [4, 4, 4, 12]
    assert hidden == [4, 4, 4, 4]
    assert gate_modes([8, 4, 4, 4], 3, "last") == [8, 4, 4, 12]


def test_gate_modes_errors():
    with pytest.raises(UserError, match="first"):
        gate_modes([4, 4], 4, "middle")
    with pytest.raises(UserError):
        gate_modes([4, 4], 0, "first")
