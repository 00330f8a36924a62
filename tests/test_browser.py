"""report.html in a real browser: headless Chromium over the DevTools protocol (tests/browser.py).

A small fake run (tests/run_fakes.py: fake checks, fake model source, a few seconds) writes a real
report.html; the tests open it from file:// and check what a reader would see: no console errors or
uncaught exceptions, no external requests, every image decodes, the answer table has a row per method of
the run and sorts and filters, and a screenshot. A negative test proves the harness does see errors.

Skipped when no Chromium is installed (`make install` installs Debian's `chromium` where apt works; or
set $XAUDIT_CHROMIUM to a Chrome/Chromium binary).
"""
from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import pytest

pytest.importorskip("websocket", reason="websocket-client is not installed (the dev extra: make install)")
from browser import Browser, find_chromium  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary found (chromium, chromium-browser, google-chrome or "
                             "$XAUDIT_CHROMIUM): `make install` installs Debian's chromium where apt works")

# at least 3 methods (one a baseline) and checks whose verdicts differ between methods
METHODS = ["saliency", "grad_cam", "integrated_gradients", "blank"]
SCREENSHOT = "report-screenshot.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser.launch(CHROMIUM, tmp_path_factory.mktemp("chromium"))
    try:
        yield b
    finally:
        b.close()       # always: Browser.close, then SIGTERM/SIGKILL to the browser's process group


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from test_run import fake_preset, run_fake   # also registers the fake checks (run_fakes)
    res = run_fake(tmp_path_factory.mktemp("browser-run"), fake_preset(methods=METHODS))
    assert res.report is not None and Path(res.report).is_file()
    return Path(res.run_dir)


@pytest.fixture(scope="module")
def page_(browser):
    return browser.new_page(width=1280, height=1600)


@pytest.fixture
def report(page_, run_dir):
    """The page with report.html freshly loaded (sorting and filtering in one test never leak into the next)."""
    page_.goto((run_dir / "report.html").as_uri())
    return page_


def run_methods(run_dir: Path) -> set[str]:
    from xaudit.run import Store
    with Store.open(run_dir, readonly=True) as store:
        return {c["method"] for c in store.cells()}


# ------------------------------------------------------------------------------------------ answer table
ROWS_JS = """Array.from(document.querySelectorAll('#answer > tbody > tr')).map(r => ({
    method: r.dataset.method, family: r.dataset.family, shown: r.style.display !== 'none',
    sort: Object.fromEntries(Array.from(r.querySelectorAll('td[data-verdict]')).map(td => [td.dataset.col,
                                                                                       td.dataset.sort]))}))"""
HEADS_JS = """Array.from(document.querySelectorAll('#answer > thead th')).map(th => ({
    col: th.dataset.col, text: th.textContent.trim(), sort: th.getAttribute('aria-sort')}))"""


def rows(page) -> list[dict]:
    return page.evaluate(ROWS_JS)


def click_header(page, col: str) -> None:
    page.evaluate(f"document.querySelector('#answer > thead th[data-col=\"{col}\"]').click()")


def aria_sort(page, col: str) -> str | None:
    return page.evaluate(f"document.querySelector('#answer > thead th[data-col=\"{col}\"]').getAttribute('aria-sort')")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, checked by its signature and IHDR chunk and decoded by Pillow."""
    assert data[:8] == PNG_MAGIC, "not a PNG (signature)"
    assert data[12:16] == b"IHDR", "not a PNG (no IHDR chunk first)"
    w, h = struct.unpack(">II", data[16:24])
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im.load()                                   # decodes every pixel: a truncated file raises
        assert im.format == "PNG" and im.size == (w, h)
        assert im.convert("RGB").getcolors(1) is None, "the PNG is one flat colour"
    return w, h


# ------------------------------------------------------------------------------------------ the harness
def test_harness_sees_console_errors_and_broken_images(page_, tmp_path):
    """The negative control: a page with a console.error and an image that cannot decode is reported as such
    (so the report tests below cannot pass by seeing nothing)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>bad</p><script>console.error("x")</script>'
                   '<img alt="broken" src="data:image/png;base64,AAAA">'
                   '<img alt="good" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUl'
                   'EQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="></body></html>')
    page_.goto(bad.as_uri())
    errors = page_.errors()
    assert any(e.startswith("console.error") and e.endswith("x") for e in errors), errors
    broken = page_.broken_images()
    assert [b["alt"] for b in broken] == ["broken"], broken
    # an uncaught exception is reported too, and a clean page reports nothing
    thrower = tmp_path / "throw.html"
    thrower.write_text("<!DOCTYPE html><html><body><script>null.boom()</script></body></html>")
    page_.goto(thrower.as_uri())
    assert any(e.startswith("uncaught") for e in page_.errors()), page_.errors()
    clean = tmp_path / "clean.html"
    clean.write_text("<!DOCTYPE html><html><body><p>fine</p></body></html>")
    page_.goto(clean.as_uri())
    assert page_.errors() == [] and page_.broken_images() == []


# ------------------------------------------------------------------------------------------ report.html
def test_report_loads_without_errors(report, run_dir):
    assert report.evaluate("document.title").startswith("xaudit report")
    assert report.errors() == []
    assert report.external_requests() == [], "report.html must be self-contained"


def test_report_images_decode(report):
    n = report.evaluate("document.images.length")
    assert n > 0, "the report has no figures"
    assert report.broken_images() == []
    assert report.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0 "
                           "&& i.naturalHeight > 0)")


def test_answer_table_has_one_row_per_method(report, run_dir):
    assert report.evaluate("!!document.querySelector('table#answer')"), "no <table id=answer> in report.html"
    got = rows(report)
    methods = run_methods(run_dir)
    assert methods == set(METHODS)
    assert sorted(r["method"] for r in got) == sorted(methods), "one row per method of the run"
    assert all(r["family"] for r in got), "every row names its family (data-family)"
    heads = report.evaluate(HEADS_JS)
    assert [h["col"] for h in heads] == [str(i) for i in range(len(heads))]
    assert [h["text"] for h in heads[:2]] == ["method", "family"] and len(heads) >= 3
    verdicts = report.evaluate("Array.from(document.querySelectorAll('#answer > tbody td[data-verdict]'))"
                               ".map(td => td.dataset.verdict)")
    assert verdicts and set(verdicts) <= {"reveals", "not", "inconclusive", "absent"}, verdicts
    # the preset is chosen so that at least two columns' verdicts differ between methods
    by_col: dict[str, set] = {}
    for td in report.evaluate("Array.from(document.querySelectorAll('#answer > tbody td[data-verdict]'))"
                              ".map(td => [td.dataset.col, td.dataset.verdict])"):
        by_col.setdefault(td[0], set()).add(td[1])
    assert sum(len(v) > 1 for v in by_col.values()) >= 2, by_col
    # every bug cell has a number to sort by
    for r in got:
        assert all(_num(v) is not None for v in r["sort"].values()), r


def _num(v: str | None) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def test_answer_table_sorts_by_column(report):
    heads = report.evaluate(HEADS_JS)
    before = rows(report)
    # a bug column whose values differ between methods (else sorting could not show anything)
    cols = [h["col"] for h in heads[2:] if len({_num(r["sort"].get(h["col"])) for r in before}) > 1]
    assert cols, f"no bug column of the answer table tells the methods apart: {before}"
    col = cols[0]
    key = lambda r: _num(r["sort"][col])   # noqa: E731

    click_header(report, col)                  # first click: descending by data-sort
    desc = rows(report)
    assert aria_sort(report, col) == "descending"
    assert sorted(r["method"] for r in desc) == sorted(r["method"] for r in before)
    assert [key(r) for r in desc] == sorted((key(r) for r in before), reverse=True)

    click_header(report, col)                  # second click: reversed
    asc = rows(report)
    assert aria_sort(report, col) == "ascending"
    assert [key(r) for r in asc] == sorted(key(r) for r in before)
    # the order really changed (the first click may already find the rows in descending order)
    order = lambda rs: [r["method"] for r in rs]   # noqa: E731
    assert order(desc) != order(before) or order(asc) != order(desc)
    assert order(asc) != order(desc)

    click_header(report, "0")                  # the method column: ascending text first
    by_name = order(rows(report))
    assert aria_sort(report, "0") == "ascending"
    collated = report.evaluate(f"{sorted(by_name)!r}.slice().sort(new Intl.Collator().compare)")
    assert by_name in (sorted(by_name), collated)
    click_header(report, "0")
    assert order(rows(report)) == by_name[::-1] and aria_sort(report, "0") == "descending"
    assert report.errors() == []


def test_answer_filter_by_family(report):
    all_rows = rows(report)
    families = sorted({r["family"] for r in all_rows})
    options = report.evaluate("Array.from(document.querySelectorAll('#answer-filter option')).map(o => o.value)")
    assert options[0] == "" and sorted(options[1:]) == families
    for fam in families + [""]:
        report.evaluate(f"(() => {{ const s = document.getElementById('answer-filter'); s.value = {fam!r}; "
                        "s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        shown = [r["method"] for r in rows(report) if r["shown"]]
        assert sorted(shown) == sorted(r["method"] for r in all_rows if not fam or r["family"] == fam), fam
    assert report.errors() == []


def test_report_screenshot(report, run_dir):
    # the answer table with its key and filter above it in view (the top of the page when it fits)
    report.evaluate("(() => { const a = document.getElementById('answer'); const y = a ? "
                    "a.getBoundingClientRect().top + window.scrollY - 200 : 0; "
                    "window.scrollTo(0, y + 400 < window.innerHeight ? 0 : y); })()")
    path = report.screenshot(run_dir / SCREENSHOT)
    data = path.read_bytes()
    assert len(data) > 1000
    assert png_size(data) == (1280, 1600)
