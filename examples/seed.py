"""The seed's notebook, rewritten with diyopt.

Fit y = a x + b to noisy line data with the seed's own loss, (y - y_hat).norm(), twice:
once with the packaged torch.optim.Adam, once with a self-written gradient-descent rule that only
uses the gradients autograd gives it. Then draw the loss per epoch and the fitted lines.

Run:  python examples/seed.py   (figures land in runs/seed/)
"""

from pathlib import Path

import torch

import diyopt
from diyopt import plots

out = Path("runs/seed")
out.mkdir(parents=True, exist_ok=True)

# Generating data: x = 2 U(0,1), y = -x + 1 + 0.1 N(0,1).
x, y = diyopt.data.make_line(n=100, a=-1.0, b=1.0, sigma=0.1, seed=0)
plots.save(plots.plot_data(x, y), out / "sample.png")


def loss(params):
    """The seed's linear model and its self-written loss."""
    y_hat = params["a"] * x + params["b"]
    return (y - y_hat).norm()


torch.manual_seed(0)
params0 = {"a": torch.randn(1, dtype=torch.float64), "b": torch.randn(1, dtype=torch.float64)}

# Using the optimization package: torch.optim.Adam, as is.
adam = diyopt.fit(loss, params0, torch.optim.Adam, steps=4000)


# Using only the gradients: the seed's `a = a - eta * a.grad`, as a pure per-tensor rule.
@diyopt.elementwise
def gradient_descent(grad, state, param, *, lr=0.001):
    return -lr * grad, state


own = diyopt.fit(loss, params0, gradient_descent(lr=0.001), steps=4000)

for name, result, label in (("Adam", adam, "Adam result"), ("original", own, "original result")):
    plots.save(plots.plot_loss(result.losses), out / f"{name}_loss.png")
    a, b = result.params["a"].item(), result.params["b"].item()
    plots.save(plots.plot_line_fit(x, y, a, b, label), out / f"{name}.png")
    print(f"{name:>8}: a={a:.6f} b={b:.6f} final loss={result.losses[-1]:.6f} ({result.seconds:.2f} s)")
print("exact   : a={:.6f} b={:.6f}".format(*diyopt.data.least_squares_line(x, y)))
