"""The published code's outputs (tests/data, from shared/golden) reproduced
through the public ped() on every CPU backend."""
import numpy as np
import pytest

import ped_fast
from conftest import BACKENDS, GOLDEN, golden_case


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_float64(case, backend):
    data, expected = golden_case(case)
    result = ped_fast.ped(data["X"], data["y"], reference=data["G"], backend=backend, **expected["params"])
    # 1e-9: the golden README's agreement for float64 shifts and position changes.
    np.testing.assert_allclose(result.shift, data["shift"], rtol=0, atol=1e-9)
    assert result.steps == expected["steps_taken"]
    np.testing.assert_allclose(result.position_changes, expected["position_change"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(result.features, data["X"] + data["shift"][data["y"]], rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_float32_matches_float64(case, backend):
    data, expected = golden_case(case)
    args = dict(backend=backend, **expected["params"])
    exact = ped_fast.ped(data["X"], data["y"], reference=data["G"], **args)
    single = ped_fast.ped(data["X"].astype(np.float32), data["y"], reference=data["G"].astype(np.float32), **args)
    assert single.shift.dtype == np.float32 and single.features.dtype == np.float32
    assert single.steps == exact.steps
    # 1e-4 relative in the Frobenius norm: the float32 contract.
    err = np.linalg.norm(single.shift.astype(np.float64) - exact.shift)
    assert err <= 1e-4 * np.linalg.norm(exact.shift)
