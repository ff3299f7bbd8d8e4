import os

# Figures are written headless in tests.
os.environ.setdefault("MPLBACKEND", "Agg")

# The tests use tiny tensors: one intra-op thread. With two, every small float64 matmul waits on an OpenMP
# barrier, which on a busy CI machine costs ~40 ms per op instead of ~3 us (measured: 20x5 @ 5x3).
import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def float64_default():
    """torch's default dtype set to float64 for one test. torch.optim keeps scalar state (``step``,
    NAdam's ``mu_product``) in the default dtype, so comparisons with it are float64 throughout only then.
    Use with ``pytestmark = pytest.mark.usefixtures("float64_default")``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def count_kernel_calls(monkeypatch, kernels: dict) -> dict:
    """Wrap each kernel of a ``{name: (state names, run)}`` table so its successful calls are counted per
    name (the kernels run unchanged); returns the counts."""
    calls = {}
    for name, (state, run) in list(kernels.items()):

        def counted(*a, _run=run, _name=name):
            out = _run(*a)
            calls[_name] = calls.get(_name, 0) + int(bool(out))
            return out

        monkeypatch.setitem(kernels, name, (state, counted))
    return calls


@pytest.fixture
def kernel_calls(monkeypatch):
    """The ``to_torch`` kernel engine's successful calls per kernel name; used by the kernel and partition
    tests to show which path ran."""
    from diyopt.engines import _to_torch as torch_optim

    return count_kernel_calls(monkeypatch, torch_optim._KERNELS)


@pytest.fixture
def fit_kernel_calls(monkeypatch):
    """The eager fit's successful kernel calls per kernel name (``engines._fit_step``)."""
    from diyopt.engines import _fit_step

    return count_kernel_calls(monkeypatch, _fit_step.KERNELS)
