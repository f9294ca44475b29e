"""``petdp report``: the self-contained HTML report (and optionally a PDF) of a result folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (figures embedded) of a demo, batch-row or batch folder",
        description="Read a result folder of petdp demo, of one petdp batch row (OUT/rows/<id>) or of a whole "
                    "batch (OUT, with cohort_summary.json) and write one HTML page with everything it holds: lesion "
                    "slices (axial, coronal, sagittal) with every method's contour and the truth, the method "
                    "comparison table, quantification, overlap matrix, prescription maps with colour bar, DVH and "
                    "QVH curves, hypoxia maps, timepoint tables and plots, and a list of what the folder does not "
                    "hold. Figures are embedded as PNG data (no external resources); the page opens offline.",
        epilog="Exit codes: 0 success, 1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("result_dir", metavar="RESULT_DIR", help="folder written by petdp demo or petdp batch")
    parser.add_argument("--out", metavar="REPORT.html", help="report file (default: RESULT_DIR/report.html)")
    parser.add_argument("--pdf", nargs="?", const=True, default=False, metavar="REPORT.pdf",
                        help="also write the figures as a PDF (default name: the report's, with .pdf)")
    parser.add_argument("--title", help="page title (default from the folder's kind)")
    parser.add_argument("--progress", choices=("auto", "tqdm", "plain", "off"), default="auto",
                        help="progress display on stderr (default auto: tqdm on a terminal, else plain lines)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and say where it is and what was missing."""
    from ..pipeline.report import write_report

    result = write_report(args.result_dir, out=args.out, title=args.title, pdf=args.pdf, progress=args.progress)
    print(f"[report] {result.kind}: {len(result.figures)} figure(s) in {len(result.sections)} section(s) -> "
          f"{result.html}")
    if result.pdf is not None:
        print(f"[report] PDF -> {result.pdf}")
    for item in result.missing:
        print(f"[report] not in the folder: {item}")
    for problem in result.problems:
        print(f"[report] problem: {problem}")
    return 0
