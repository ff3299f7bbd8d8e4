"""diyopt report: one self-contained HTML page, checked by parsing it and by rendering it in Chromium."""

import base64
import csv
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import diyopt
from diyopt.analysis import compare_all, save_all
from diyopt.analysis.report import write_report
from diyopt.cli import main


@pytest.fixture(scope="module")
def comparison_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "line"
    c = diyopt.compare(
        "line", {"sgd": diyopt.optim.sgd(lr=1e-2), "adam": diyopt.optim.adam(lr=1e-2)}, seeds=2, steps=60
    )
    return c.save(out)


class _Page(HTMLParser):
    """The parts of the page a reader depends on: images, links to other files, table cells."""

    def __init__(self):
        super().__init__()
        self.imgs, self.external, self.cells, self.title = [], [], [], ""
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        self._in = tag

    def handle_data(self, data):
        if self._in == "td":
            self.cells.append(data)
        if self._in == "title":
            self.title += data

    def handle_endtag(self, tag):
        self._in = None


def parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_embeds_every_figure_and_the_table(comparison_dir):
    out = write_report(comparison_dir)
    assert out == comparison_dir / "report.html"
    page = parse(out)
    assert page.external == []  # self-contained: nothing to fetch
    pngs = sorted(comparison_dir.glob("*.png"))
    assert len(pngs) == 3
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.imgs]
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    with (comparison_dir / "table.csv").open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["rank"]))
    for r in rows:  # each optimizer's row, with its final loss to 4 digits
        assert r["optimizer"] in page.cells
        assert f"{float(r['final_loss']):.4g}" in page.cells
    text = out.read_text()
    import torch

    assert f"<td>{torch.__version__}</td>" in text and f"<td>{diyopt.__version__}</td>" in text  # versions
    assert page.title.startswith("diyopt comparison: line")


def test_report_of_several_problems_has_a_section_each(tmp_path):
    comps = compare_all(["rosenbrock", "line"], ["sgd", "adam"], seeds=1, steps=10)
    folder = save_all(comps, tmp_path / "suite")
    out = write_report(folder, tmp_path / "elsewhere" / "r.html", title="Suite <test>")
    text = out.read_text()
    # the profiles first, then the problems in the order given
    assert re.findall(r'<section id="([^"]+)"', text) == ["s-suite", "s-rosenbrock", "s-line", "versions"]
    assert "Suite &lt;test&gt;" in text  # escaped
    # 2 profiles + 3 figures per 2-D problem (line: a, b; rosenbrock: 2-D x)
    assert len(parse(out).imgs) == 2 + 3 + 3


def test_cli_report(tmp_path, comparison_dir, capsys):
    target = tmp_path / "page.html"
    assert main(["report", str(comparison_dir), "--out", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert target.read_text().startswith("<!DOCTYPE html>")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "holds no diyopt comparison" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_never_overwrites_a_file_diyopt_did_not_write(tmp_path, comparison_dir, capsys):
    """``--out mine.txt`` used to replace the user's file with the page; a page diyopt wrote is replaced."""
    mine = tmp_path / "mine.txt"
    mine.write_text("mine\n")
    assert main(["report", str(comparison_dir), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "is not a report diyopt wrote" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    page = tmp_path / "page.html"
    assert main(["report", str(comparison_dir), "--out", str(page)]) == 0
    assert main(["report", str(comparison_dir), "--out", str(page)]) == 0  # its own page: rewritten


def test_missing_jinja2_is_a_clear_error(comparison_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match=r"pip install 'diyopt\[report\]'"):
        write_report(comparison_dir, tmp_path / "r.html")


# ---------------------------------------------------------------- a real browser


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("DIYOPT_REQUIRE_BROWSER"):
        pytest.fail("chromium not found, and DIYOPT_REQUIRE_BROWSER is set (.ci/run installs it)")
    pytest.skip("chromium not found; install it with `apt-get install -y chromium` (.ci/run does)")


def _browser(args, tmp_path, url):
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _figures_marker(dom):
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    return re.search(r'data-figures="(\w+)"', body.group(0)).group(1)


def test_report_renders_in_headless_chromium(comparison_dir, tmp_path):
    html = write_report(comparison_dir, tmp_path / "report.html")
    url = html.resolve().as_uri()
    dom = _browser(["--virtual-time-budget=10000", "--dump-dom"], tmp_path, url).stdout
    assert _figures_marker(dom) == "ok"
    assert 'data-figure-count="3"' in dom and "<title>[figures ok] " in dom

    shot = tmp_path / "shot.png"
    _browser([f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars"], tmp_path, url)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    gray = pixels.mean(axis=2)
    assert gray.std() > 0.05  # not a blank page
    # The figures are on screen: the figure area holds many distinct colours (lines, bands, contours),
    # unlike a page of text on white.
    assert len(np.unique((pixels[300:1400] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200


def test_the_browser_check_fails_on_a_broken_figure(comparison_dir, tmp_path):
    html = write_report(comparison_dir, tmp_path / "report.html")
    text = html.read_text()
    # corrupt one embedded PNG: the marker must notice
    broken = re.sub(r"(data:image/png;base64,)[A-Za-z0-9+/=]{40}", r"\1AAAA", text, count=1)
    assert broken != text
    html.write_text(broken)
    dom = _browser(["--virtual-time-budget=10000", "--dump-dom"], tmp_path, html.resolve().as_uri()).stdout
    assert _figures_marker(dom) == "missing"


def test_report_bolds_every_winner_not_the_first_row(tmp_path):
    """Two optimizers that are the same algorithm (sgd without momentum and gradient_descent) tie at rank 1:
    both rows are bold; the slower adam is not."""
    c = diyopt.compare(
        "line",
        {
            "adam": diyopt.optim.adam(lr=1e-3),
            "sgd": diyopt.optim.sgd(lr=1e-2),
            "gd": diyopt.optim.gradient_descent(lr=1e-2),
        },
        seeds=2,
        steps=300,
    )
    ranks = {r["optimizer"]: r["rank"] for r in c.table()}
    assert ranks["sgd"] == ranks["gd"] == 1 and ranks["adam"] > 1
    out = write_report(c.save(tmp_path / "tie"))
    rows = re.findall(r"<tr( class=\"winner\")?><td>(\d+)</td><td>(\w+)</td>", out.read_text())
    bold = {name for winner, _, name in rows if winner}
    assert {name for _, _, name in rows} == {"adam", "sgd", "gd"} and bold == {"sgd", "gd"}
    css = re.search(r"table\.results tbody tr\.winner td \{ font-weight: 600; \}", out.read_text())
    assert css and "tr:first-child" not in out.read_text()
