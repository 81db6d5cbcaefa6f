import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual, expected, dtype=torch.float32, msg=""):
    """fp32: torch's usual tolerance; fp64: tight."""
    tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(actual, expected, **tol, msg=msg or None)
