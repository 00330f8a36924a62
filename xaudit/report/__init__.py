"""The report stage: scorecard tables and a self-contained report.html, computed from a run's store.

    >>> from xaudit.report import write_report, scorecard, render_terminal
    >>> write_report("runs/smoke")            # runs/smoke/report.html
"""
from xaudit.report.html import render, write_report
from xaudit.report.scorecard import Entry, Scorecard, render_terminal, scorecard

write_html = write_report

__all__ = ["Entry", "Scorecard", "render", "render_terminal", "scorecard", "write_html", "write_report"]
