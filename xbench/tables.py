"""Table cells and tables for the text formats (github markdown, LaTeX, HTML), every label and
cell escaped for the format it is printed in (:mod:`xbench.escaping`).

Numbers show :data:`DIGITS` significant digits in positional notation (``1080``, ``0.560``,
``0.0284``), scientific only below 1e-4; an interval's half-width is rounded to the value's
decimal places (``0.530 ± 0.040``, ``178 ± 26``). A missing value is an em-dash, never 0.
"""

from __future__ import annotations

import math
import textwrap

from tabulate import tabulate

from xbench import escaping

FORMATS = ("github", "latex", "csv", "json", "html")
DIGITS = 3
MISSING = "—"


def _decimals(x: float, digits: int = DIGITS) -> int:
    """Decimal places that show ``x`` to ``digits`` significant digits."""
    rounded = float(f"{x:.{digits}g}")
    return max(0, digits - 1 - math.floor(math.log10(abs(rounded)))) if rounded else digits - 1


def number(x: float, digits: int = DIGITS) -> str:
    """``x`` to ``digits`` significant digits, positional (scientific only below 1e-4)."""
    if x != 0 and abs(x) < 1e-4:
        return f"{x:.{digits - 1}e}"
    return f"{float(f'{x:.{digits}g}'):.{_decimals(x, digits)}f}"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def cell(value, lo=None, hi=None) -> str:
    """``0.530 ± 0.040``; the value alone without an interval; an em-dash when missing."""
    if _missing(value):
        return MISSING
    text = number(value)
    if not _missing(lo) and not _missing(hi):
        half = (hi - lo) / 2
        places = _decimals(value) if value != 0 and abs(value) >= 1e-4 else DIGITS - 1
        text += f" ± {half:.{places}f}"
    return text


def render_table(fmt: str, title: str, headers: list[str], body: list[list[str]], legend: list[str],
                 width: int = 120) -> str:
    """One titled table with its legend paragraphs (wrapped at ``width``), in ``fmt`` (github, latex, html)."""
    if fmt == "html":  # tabulate's html format escapes every cell and header itself
        rendered = tabulate(body, headers=headers, tablefmt="html", disable_numparse=True)
        notes = "".join(f"<p class='note'>{escaping.html_text(line)}</p>" for line in legend)
        return f"<h3>{escaping.html_text(title)}</h3>\n{rendered}\n{notes}"
    if fmt == "github":
        rendered = github([escaping.markdown(h) for h in headers], [[escaping.markdown(c) for c in r] for r in body])
        notes = "".join("\n\n" + textwrap.fill(escaping.markdown(line), width) for line in legend)
        return f"### {escaping.markdown(title)}\n\n{rendered}{notes}"
    rendered = tabulate([[escaping.latex(c) for c in row] for row in body], headers=[escaping.latex(h) for h in headers],
                        tablefmt="latex_raw", disable_numparse=True,
                        colalign=["left", *["right"] * (len(headers) - 1)])
    if fmt == "latex":  # title and legend as comments, one line each: nothing in them is read as LaTeX
        lines = [line for text in [title, *legend] for line in textwrap.wrap(escaping.one_line(text), width)]
        return "\n".join(f"% {line}" for line in lines) + f"\n{rendered}"
    raise ValueError(f"no text table format {fmt!r}")


def github(headers: list[str], body: list[list[str]]) -> str:
    """A GitHub markdown table of escaped cells: the first column left-aligned, the others right-aligned."""
    widths = [max(len(c) for c in column) for column in zip(headers, *body)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in body)])
