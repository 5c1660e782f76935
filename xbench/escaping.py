"""Escaping of text for every output format xbench writes (leaderboards, reports, plots).

Every label and cell that comes from a run (method labels, model ids, task names, column
names) passes through the escape of the format it is printed in:

* :func:`latex`: the ten LaTeX specials and ``<``, ``>``, ``|`` become commands that print them
  (``\\input{x}`` prints literally); of the other non-ASCII characters, the symbols xbench prints
  (arrows, ±, em-dash) become LaTeX commands, an accented ASCII letter an accent command
  (``é`` -> ``\\'{e}``), and anything else prints as ``U+XXXX``, so that ``pdflatex`` with its
  default fonts compiles every table;
* :func:`markdown`: ``|`` (a column separator), backslash, backtick, ``*``, ``<``, ``>``,
  ``[``, ``]`` and word-edge ``_`` are backslash-escaped; line breaks become spaces;
* :func:`html_text`: :func:`html.escape` with quotes;
* :func:`csv_cell`: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return gets a leading ``'`` (OWASP's advice against CSV formula injection); numbers are
  never text cells, so they stay numbers;
* :func:`mathtext`: ``$`` escaped so that matplotlib never parses a label as mathtext.
"""

from __future__ import annotations

import html
import re
import unicodedata

LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "#": r"\#",
    "$": r"\$",
    "%": r"\%",
    "&": r"\&",
    "_": r"\_",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
#: non-ASCII characters xbench itself prints, as LaTeX commands that need no package
LATEX_SYMBOLS = {
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "±": r"$\pm$",
    "—": "---",
    "–": "--",
    "·": r"$\cdot$",
    "×": r"$\times$",
    "−": "-",
    "⚠": r"\textbf{(!)}",
    "★": r"$\star$",
    "†": r"\textdagger{}",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
}
#: combining accents (NFD) and the LaTeX accent command of each
LATEX_ACCENTS = {"\u0301": "\\'", "\u0300": "\\`", "\u0302": "\\^", "\u0308": '\\"', "\u0303": "\\~",
                 "\u0327": "\\c", "\u030a": "\\r", "\u030c": "\\v"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN_CHARS = re.compile(r"([\\|`*<>\[\]])")
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def one_line(text: object) -> str:
    """``text`` as a string on one line (line breaks and other control characters become spaces)."""
    return "".join(" " if (ord(c) < 32 or ord(c) == 127) else c for c in str(text))


def latex(text: object) -> str:
    """Text that LaTeX prints as written."""
    out = []
    for c in one_line(text):
        if c in LATEX_SPECIALS:
            out.append(LATEX_SPECIALS[c])
        elif c in LATEX_SYMBOLS:
            out.append(LATEX_SYMBOLS[c])
        elif ord(c) < 128:
            out.append(c)
        else:
            out.append(_latex_accented(c) or f"U+{ord(c):04X}")
    return "".join(out)


def _latex_accented(c: str) -> str | None:
    """An ASCII letter with one accent (``é`` -> ``\\'{e}``) as a LaTeX accent command, else None."""
    parts = unicodedata.normalize("NFD", c)
    if len(parts) == 2 and parts[0].isascii() and parts[0].isalpha() and parts[1] in LATEX_ACCENTS:
        return f"{LATEX_ACCENTS[parts[1]]}{{{parts[0]}}}"
    return None


def markdown(text: object) -> str:
    """Text for a markdown (GitHub) table cell: it cannot end the cell, start markup or a tag."""
    escaped = _MARKDOWN_CHARS.sub(r"\\\1", one_line(text))
    return _EDGE_UNDERSCORE.sub(r"\\_", escaped)


def html_text(text: object) -> str:
    return html.escape(str(text), quote=True)


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula; non-strings are returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def mathtext(text: object) -> str:
    """A matplotlib label printed literally (``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")
