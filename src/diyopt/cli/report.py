"""``diyopt report``: one HTML page from compare folders."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page from a `diyopt compare` folder",
        description="Write one HTML file with the figures embedded, the tables, and the "
        "settings and versions of the comparison in DIR.",
    )
    p.add_argument("dir", metavar="DIR", help="a folder written by `diyopt compare --out DIR`")
    p.add_argument("--out", help="the HTML file to write (default: DIR/report.html)")
    p.add_argument("--title", help="page title (default: from the problems)")

    def run(args) -> int:
        from diyopt.analysis.report import write_report

        print(write_report(args.dir, args.out, title=args.title))
        return 0

    p.set_defaults(run=run)
