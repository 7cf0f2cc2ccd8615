"""The run report: one self-contained HTML page (RUN/report/index.html) with the run's
configuration, stages (plan beside measured), SAE quality, the contrast as volcano plots and a
filterable feature table that opens feature cards, patch effects and traces.

    from saelab.report import build_report
    build_report("runs/demo")   # -> runs/demo/report/index.html
"""

from saelab.report.build import build_report

__all__ = ["build_report"]
