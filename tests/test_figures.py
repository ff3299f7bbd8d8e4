"""Figures a user would keep (issue 10, item 13): labels that say what is plotted, legends that name the
method, marks told apart from the optimizers' lines, the sweep as gaps to the best, readable log ticks.

Checked on the matplotlib objects the figures are drawn from (labels, legend texts, colours, data), and
the files' names on disk.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

import diyopt
import diyopt.analysis.demo
from diyopt import plots
from diyopt.analysis._arrays import flat2 as _flat2


def legend_texts(ax_or_fig) -> list[str]:
    legends = ax_or_fig.legends if hasattr(ax_or_fig, "legends") and ax_or_fig.legends else [ax_or_fig.get_legend()]
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def test_demo_figures_say_step_loss_and_the_method(tmp_path, monkeypatch):
    seen = {}
    original = diyopt.analysis.demo._save

    def spy(ax, path):
        seen[path.name] = (ax.get_xlabel(), ax.get_ylabel(), legend_texts(ax))
        original(ax, path)

    monkeypatch.setattr(diyopt.analysis.demo, "_save", spy)
    diyopt.analysis.demo.run_demo(out=tmp_path / "demo", steps=30, parallel=False)
    # the seed's five file names, plus the overlay
    assert {p.name for p in (tmp_path / "demo").glob("*.png")} == {
        "sample.png",
        "Adam_loss.png",
        "Adam.png",
        "original_loss.png",
        "original.png",
        "compare_loss.png",
    }
    for name in ("Adam_loss.png", "original_loss.png", "compare_loss.png"):
        xlabel, ylabel, _ = seen[name]
        assert xlabel == "step" and "‖y − ŷ‖" in ylabel, name
    assert seen["original_loss.png"][2] == ["gradient descent (own rule)"]
    assert seen["Adam_loss.png"][2] == ["Adam (torch.optim)"]
    assert seen["compare_loss.png"][2] == ["Adam (torch.optim)", "gradient descent (own rule)"]
    fit_legend = seen["original.png"][2]
    assert fit_legend[0] == "data" and fit_legend[1].startswith("gradient descent (own rule): y = ")
    assert "least squares (exact)" in fit_legend
    assert not any("original" in t for v in seen.values() for t in v[2])


def test_paths_mark_starts_and_optimum_in_the_legend_in_colours_no_optimizer_uses():
    c = diyopt.compare("himmelblau", ["sgd:lr=1e-2", "adam:lr=1e-1", "sgd:lr=1e-2,momentum=0.5"], seeds=3, steps=60)
    ax = c.plot_paths()
    texts = legend_texts(ax)
    assert texts[:3] == list(c.runs)
    assert "starts (seeds 0–2; seed 0 large)" in texts and "known minima (4)" in texts
    lines = [l for l in ax.get_lines() if l.get_label() in c.runs]
    used = {to_rgba(l.get_color()) for l in lines}
    marks = {l.get_label(): l for l in ax.get_lines() if l.get_label().startswith(("starts", "known"))}
    start, star = marks["starts (seeds 0–2; seed 0 large)"], marks["known minima (4)"]
    for color in (start.get_markerfacecolor(), star.get_markerfacecolor()):
        assert to_rgba(color) not in used
    assert to_rgba(start.get_markerfacecolor()) != to_rgba(star.get_markerfacecolor())
    # the star sits on a known minimizer and the starts are the comparison's starts
    assert tuple(star.get_xydata()[0]) in {tuple(_flat2(m)) for m in c.minima()}
    np.testing.assert_allclose(start.get_xydata()[0], c.runs[texts[0]][0].path[0])


def _sweep(two: bool):
    problem = diyopt.problems.get("rosenbrock")
    grid = {"lr": [1e-4, 1e-3, 3e-3, 1e-2]}
    if two:
        grid["momentum"] = [0.0, 0.9]
    return diyopt.sweep(problem.loss, problem.params0, diyopt.optim.sgd(), 200, grid=grid, seeds=2)


@pytest.mark.parametrize("two", [False, True])
def test_sweep_figure_plots_gaps_to_the_best_on_log_axes(two):
    result = _sweep(two)
    fig = plots.plot_sweep(result)
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == (3 if two else 1)
    if two:  # the heatmap first: median gap over seeds per (lr, momentum)
        heat = panels.pop(0)
        assert heat.images and heat.get_xlabel() == "momentum" and heat.get_ylabel() == "lr"
        grid = heat.images[0].get_array()
        assert grid.shape == (4, 2)
        assert any(t.get_text() == "diverged" for t in heat.texts)  # lr=1e-2 with momentum 0.9 diverges
    ok = [r for r in result.rows if not r["diverged"]]
    best = min(r["final_loss"] for r in ok)
    for ax in panels:
        assert ax.get_yscale() == "log" and "best" in ax.get_ylabel()
        dots = ax.collections[0].get_offsets()
        gaps = sorted(r["final_loss"] - best for r in ok if r["final_loss"] > best)
        np.testing.assert_allclose(sorted(np.asarray(dots)[:, 1]), gaps, rtol=1e-12)
    diverged = sum(r["diverged"] for r in result.rows)
    assert diverged > 0 and f"diverged ({diverged} runs)" in legend_texts(fig)
    crosses = [c for c in panels[0].collections if c.get_label().startswith("diverged")]
    assert len(crosses) == 1 and len(crosses[0].get_offsets()) == diverged
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize(
    "lo, hi, expected",
    [(1.0, 20.0, ["1", "2", "5", "10", "20"]), (3e-3, 0.4, ["0.005", "0.01", "0.02", "0.05", "0.1", "0.2"])],
)
def test_log_axes_have_readable_ticks(lo, hi, expected):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [lo, hi])
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    plots.readable_log_ticks(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
    assert labels == expected
    plt.close(fig)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_figure_of_a_result_says_step(dtype):
    losses = torch.logspace(1, -1, 50, dtype=dtype)
    ax = plots.plot_loss(losses, label="mine")
    assert ax.get_xlabel() == "step" and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), losses.double().numpy(), rtol=1e-6)


def test_performance_profile_ticks_are_plain_factors():
    import matplotlib.pyplot as plt

    from diyopt.analysis.profiles import plot_performance_profile

    ax = plot_performance_profile({"a": [10.0, 20.0, math.inf], "b": [40.0, 20.0, 90.0]})
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if 1 <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert labels[:3] == ["1", "2", "4"]
    plt.close(ax.figure)
