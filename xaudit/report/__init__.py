"""The report stage: the answer table (which method reveals which bug), scorecard tables and a
self-contained report.html, computed from a run's store.

    >>> from xaudit.report import write_report, answer_table
    >>> write_report("runs/smoke")            # runs/smoke/report.html
"""
from xaudit.report.answer import AnswerTable, answer_table
from xaudit.report.html import render, write_report
from xaudit.report.scorecard import Entry, Scorecard, render_terminal, scorecard

write_html = write_report

__all__ = ["AnswerTable", "answer_table", "Entry", "Scorecard", "render", "render_terminal", "scorecard", "write_html", "write_report"]
