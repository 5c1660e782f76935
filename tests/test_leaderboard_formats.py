"""Every leaderboard format escapes what it prints; the LaTeX output compiles with a real TeX
engine; the headline of the committed runs fits 160 characters."""

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from xbench import escaping
from xbench.leaderboard import render

ROOT = Path(__file__).resolve().parents[1]
PDFLATEX = shutil.which("pdflatex")
EVIL_LABELS = (
    "a|b method",
    r"\input{secret} & $x^2$ #1 50% ~_{}",
    "=HYPERLINK(\"http://x\")",
    "-2+3",
    "@SUM(A1)",
    "\tTAB",
    "<b>bold</b> [link](http://x) *em* `code`",
    "ünïcødé ★ 中",
    "line\nbreak",
)


def _summary(label, value):
    metrics = {
        "accuracy": {"value": value, "n": 3, "category": "answer", "higher_is_better": True, "ci95": [0.1, 0.9]},
        "agreement_f1": {"value": -0.25, "n": 3, "category": "agreement", "higher_is_better": True, "ci95": None},
        "odd|col": {"value": 0.5, "n": 3, "category": "localisation", "higher_is_better": True, "ci95": None},
    }
    return {"task": {"name": "t|ask_"}, "model": {"id": r"m\model{x}"}, "method": {"name": "m", "label": label},
            "metrics": metrics}


@pytest.fixture()
def evil(tmp_path):
    for i, label in enumerate(EVIL_LABELS):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(_summary(label, 0.1 * (i + 1))))
    return tmp_path


def _split_row(line):
    """Cells of a markdown table row, honouring backslash-escaped pipes."""
    cells, cur, esc = [], "", False
    for ch in line.strip()[1:-1]:
        if esc:
            cur, esc = cur + ch, False
        elif ch == "\\":
            cur, esc = cur + ch, True
        elif ch == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += ch
    return cells + [cur]


@pytest.mark.parametrize("columns", [None, "all"])
def test_markdown_pipes_and_markup_escaped(evil, columns):
    text = render(evil, columns_filter=columns)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    widths = {len(_split_row(line)) for line in rows}
    assert len(widths) == 1  # a `|` in a label or column name does not shift any column
    assert r"a\|b method" in text and r"\<b\>bold\</b\>" in text and r"\[link\](http://x) \*em\* \`code\`" in text
    assert "line break" in text and "### task: t\\|ask\\_" in text and r"m\\model{x}" in text
    if columns == "all":
        assert r"odd\|col ↑" in text


def test_html_escapes_labels_and_columns(evil):
    html = render(evil, "html", columns_filter="all")
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "odd|col" in html


def test_csv_neutralises_formula_cells_and_keeps_numbers(evil):
    text = render(evil, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    methods = {r["method"] for r in rows}
    assert {"'=HYPERLINK(\"http://x\")", "'-2+3", "'@SUM(A1)", "'\tTAB"} <= methods
    assert "a|b method" in methods
    assert all(not m.startswith(escaping.FORMULA_STARTS) for m in methods)
    assert sorted(float(r["agreement_f1"]) for r in rows)[0] == -0.25  # a negative number stays a number
    assert next(r for r in rows if r["method"] == "a|b method")["agreement_f1"] == "-0.25"
    cr = escaping.csv_cell("\rx")
    assert cr == "'\rx" and escaping.csv_cell(-3.5) == -3.5


def test_latex_escapes_every_label():
    assert escaping.latex(r"\input{secret}") == r"\textbackslash{}input\{secret\}"
    assert escaping.latex("50% & $x$ #_^~") == r"50\% \& \$x\$ \#\_\textasciicircum{}\textasciitilde{}"
    assert escaping.latex("é ★ 中") == r"\'{e} $\star$ U+4E2D"


def _compile(tmp_path, table):
    (tmp_path / "secret.tex").write_text("SECRET-WAS-INPUT")
    (tmp_path / "table.tex").write_text(table)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage[margin=5mm,landscape]{geometry}\n\\begin{document}\n\\tiny\n"
        "\\input{table}\n\\end{document}\n"
    )
    return subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(PDFLATEX is None, reason="no TeX engine (pdflatex): .ci/run installs Debian's texlive-latex-base")
@pytest.mark.parametrize("columns", [None, "all"])
def test_latex_output_compiles_and_prints_input_literally(evil, tmp_path, columns):
    table = render(evil, "latex", columns_filter=columns)
    out = tmp_path / "tex"
    out.mkdir()
    res = _compile(out, table)
    assert res.returncode == 0, res.stdout[-3000:]
    log = (out / "doc.log").read_text(errors="replace")
    assert "secret.tex" not in log  # \input{secret} in a label was printed, not executed
    assert (out / "doc.pdf").stat().st_size > 1000


@pytest.mark.skipif(PDFLATEX is None, reason="no TeX engine (pdflatex): .ci/run installs Debian's texlive-latex-base")
def test_latex_of_the_committed_runs_compiles(tmp_path):
    res = _compile(tmp_path, render(ROOT / "results" / "runs", "latex"))
    assert res.returncode == 0, res.stdout[-3000:]


def test_the_tex_check_notices_an_unescaped_input(tmp_path):
    """The compile check above can fail: an unescaped ``\\input`` of secret.tex shows in the log."""
    if PDFLATEX is None:
        pytest.skip("no TeX engine (pdflatex): .ci/run installs Debian's texlive-latex-base")
    _compile(tmp_path, "\\input{secret}\n")
    assert "secret.tex" in (tmp_path / "doc.log").read_text(errors="replace")


def test_headline_of_committed_runs_fits_160_characters():
    text = render(ROOT / "results" / "runs")
    assert max(len(line) for line in text.splitlines()) <= 160
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "method", "n", "accuracy ↑", "agr F1 ↑", "F1 op ↑", "agr AUROC ↑", "del gain ↑", "ins gain ↑", "loc ↑", "loc@ctrl", "sanity ↓",
        "ms p50 ↓", "MiB ↓"]
    assert "200 shared samples" in text and "| gradient_relevancy ★ | 200 |" in text
    fastrm = json.loads((ROOT / "results/runs/tiny-llava-easyvqa/fastrm/summary.json").read_text())["metrics"]
    row = next(line for line in text.splitlines() if line.startswith("| fastrm ")).split("|")
    assert float(row[4]) == pytest.approx(fastrm["agreement_f1"]["value"], abs=5e-4)
    assert float(row[5]) == pytest.approx(fastrm["agreement_f1_operating"]["value"], abs=5e-4)
    gain = fastrm["deletion_auc_random"]["value"] - fastrm["deletion_auc"]["value"]
    assert float(row[7]) == pytest.approx(gain, abs=5e-4)
