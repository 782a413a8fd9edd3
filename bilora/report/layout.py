"""One table model written three ways: csv (numbers), Markdown and LaTeX (formatted cells).

An interval cell is an :class:`Est` and reads ``93.4 [92.9, 93.9]`` (percent, one
decimal), followed by ``±0.6`` (the seed-to-seed standard deviation) when several
seeds were averaged. Markdown writes it on one line; LaTeX writes the value in one
table row and the rest of the same text in small type in the row under it, so wide
tables stay readable, and splits a table too wide for a page into several tabulars
(row labels repeated, column groups kept whole where they fit). The LaTeX needs
``\\usepackage{booktabs}`` only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

NAN = float("nan")
TEXT_WIDTH_CM = 16.0  # a single-column page; wider tables are split into tabulars
_CM_PER_CHAR = {"footnotesize": 0.14, "scriptsize": 0.125}  # a digit at 8 pt and 7 pt
_PAD_CM = 0.21  # 2 x \tabcolsep of 3pt

_TEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "σ": r"$\sigma$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$",
    "→": r"$\rightarrow$", "–": "--", "—": "---", "…": r"\dots{}", "Δ": r"$\Delta$",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "\u2009": " ",
}
_TEX = str.maketrans(_TEX_CHARS)


def tex_escape(text: str) -> str:
    """``text`` safe in LaTeX text mode (specials escaped, a few symbols as math)."""
    return str(text).translate(_TEX)


def _header_lines(text: str, longest: int = 12) -> list[str]:
    """A long header broken in two at the space nearest its middle."""
    if len(text) <= longest or " " not in text:
        return [text]
    cut = min((i for i, c in enumerate(text) if c == " "), key=lambda i: abs(i - len(text) / 2))
    return [text[:cut], text[cut + 1:]]


def _tex_header(text: str) -> str:
    lines = _header_lines(text)
    if len(lines) == 1:
        return tex_escape(text)
    return r"\shortstack{" + r"\\".join(tex_escape(x) for x in lines) + "}"


def _finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


@dataclass(frozen=True)
class Est:
    """A value in percent with its interval and seed spread; ``missing`` says why none."""

    value: float
    lo: float = NAN
    hi: float = NAN
    sd: float = NAN
    seeds: int = 0
    missing: str = "n/a"

    @property
    def ok(self) -> bool:
        return _finite(self.value)

    @property
    def has_interval(self) -> bool:
        return self.ok and _finite(self.lo) and _finite(self.hi)

    def parts(self, digits: int = 1) -> tuple[str, str]:
        """(value, the rest: ``[lo, hi] ±sd``) as text; the rest may be empty."""
        if not self.ok:
            return self.missing, ""
        rest = []
        if self.has_interval:
            rest.append(f"[{self.lo:.{digits}f}, {self.hi:.{digits}f}]")
        if _finite(self.sd):
            rest.append(f"±{self.sd:.{digits}f}")
        return f"{self.value:.{digits}f}", " ".join(rest)

    def text(self, digits: int = 1) -> str:
        value, rest = self.parts(digits)
        return f"{value} {rest}".strip()

    def tex(self, digits: int = 1) -> tuple[str, str]:
        """(the value, the rest in small type) for two table rows; the rest may be empty."""
        value, rest = self.parts(digits)
        if not self.has_interval:  # a value, or a value ±sd: one line
            return tex_escape(f"{value} {rest}".strip()), ""
        return tex_escape(value), rf"{{\scriptsize {tex_escape(rest)}}}"

    def width_cm(self) -> float:
        value, rest = self.parts()
        if self.has_interval:
            return max(len(value) * _CM_PER_CHAR["footnotesize"],
                       len(rest) * _CM_PER_CHAR["scriptsize"])
        return len(f"{value} {rest}".strip()) * _CM_PER_CHAR["footnotesize"]


Cell = str | Est


@dataclass(frozen=True)
class Column:
    """A column: its header, the group it belongs to (a spanning header), its alignment."""

    header: str
    group: str | None = None
    align: str = "c"
    name: str | None = None  # the one-row header (Markdown); default "<group> <header>"

    @property
    def flat(self) -> str:
        if self.name:
            return self.name
        return f"{self.group} {self.header}" if self.group else self.header


@dataclass
class Table:
    """A rendered table: heading, caption lines, columns (stubs first), rows, csv data."""

    name: str
    title: str
    caption: list[str]
    columns: list[Column]
    rows: list[list[Cell]]
    data: pd.DataFrame
    stubs: int = 1
    formats: tuple[str, ...] = ("csv", "md", "tex")
    notes: list[str] = field(default_factory=list)  # shown below the table (md, tex)
    latex_columns: list[int] | None = None  # the columns LaTeX shows (default: all)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every format of ``formats``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext in self.formats:
            p = out / f"{self.name}.{ext}"
            if ext == "csv":
                self.data.to_csv(p, index=False, float_format="%.6g")
            elif ext == "md":
                p.write_text(self.markdown())
            else:
                p.write_text(self.latex())
            paths.append(p)
        return paths

    # -- Markdown ---------------------------------------------------------------------

    def markdown(self) -> str:
        def cell(c: Cell) -> str:
            return (c.text() if isinstance(c, Est) else str(c)).replace("|", r"\|")

        head = "| " + " | ".join(cell(c.flat) for c in self.columns) + " |"
        rule = "|" + "|".join(":---" if c.align == "l" else "---:" for c in self.columns) + "|"
        body = ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        parts = [f"**{self.title}**", " ".join(self.caption), "\n".join([head, rule, *body])]
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(p for p in parts if p) + "\n"

    # -- LaTeX ------------------------------------------------------------------------

    def _blocks(self) -> list[list[int]]:
        """Data columns packed into tabulars no wider than the page, groups kept whole."""
        cols = list(range(self.stubs, len(self.columns)))
        groups: list[list[int]] = []
        for i in cols:
            g = self.columns[i].group
            if groups and g is not None and self.columns[groups[-1][-1]].group == g:
                groups[-1].append(i)
            else:
                groups.append([i])

        def width(i: int) -> float:
            cells = [r[i] for r in self.rows]
            w = [c.width_cm() if isinstance(c, Est)
                 else len(str(c)) * _CM_PER_CHAR["footnotesize"] for c in cells]
            head = max(map(len, _header_lines(self.columns[i].header))) * \
                _CM_PER_CHAR["footnotesize"]
            return max([head, *w]) + _PAD_CM

        stub = sum(min(width(i), 3.5) for i in range(self.stubs))
        blocks: list[list[int]] = []
        used = TEXT_WIDTH_CM
        for g in groups:
            w = sum(width(i) for i in g)
            if blocks and used + w <= TEXT_WIDTH_CM:
                blocks[-1] += g
                used += w
            elif stub + w <= TEXT_WIDTH_CM:
                blocks.append(list(g))
                used = stub + w
            else:  # a group wider than the page: split it, its header repeated
                for i in g:
                    if blocks and used + width(i) <= TEXT_WIDTH_CM:
                        blocks[-1].append(i)
                        used += width(i)
                    else:
                        blocks.append([i])
                        used = stub + width(i)
        return blocks or [[]]

    def _tabular(self, block: Sequence[int]) -> str:
        idx = list(range(self.stubs)) + list(block)
        spec = []
        for i in idx:
            c = self.columns[i]
            long = i < self.stubs and max(
                [len(str(r[i])) for r in self.rows] + [len(c.header)]) > 24
            spec.append("p{3.2cm}" if long else c.align)
        ragged = [s == "p{3.2cm}" for s in spec]  # wrapped row labels: ragged, not justified
        lines = [r"\begin{tabular}{" + "".join(spec) + "}", r"\toprule"]
        if any(self.columns[i].group for i in idx):
            top, rules, j = [], [], 0
            while j < len(idx):
                g = self.columns[idx[j]].group
                k = j
                while k + 1 < len(idx) and g is not None and self.columns[idx[k + 1]].group == g:
                    k += 1
                if g is None:
                    top.append("")
                else:
                    top.append(rf"\multicolumn{{{k - j + 1}}}{{c}}{{{tex_escape(g)}}}")
                    rules.append(rf"\cmidrule(lr){{{j + 1}-{k + 1}}}")
                j = k + 1
            lines.append(" & ".join(top) + r" \\")
            if rules:
                lines.append(" ".join(rules))
        lines.append(" & ".join(_tex_header(self.columns[i].header) if i >= self.stubs
                                else tex_escape(self.columns[i].header) for i in idx) + r" \\")
        lines.append(r"\midrule")
        for n, row in enumerate(self.rows):
            cells = [row[i].tex() if isinstance(row[i], Est) else
                     ((r"\raggedright " if ragged[k] else "") + tex_escape(row[i]), "")
                     for k, i in enumerate(idx)]
            if n and any(c[1] for c in cells):
                lines.append(r"\addlinespace[2pt]")
            lines.append(" & ".join(c[0] for c in cells) + r" \\")
            if any(c[1] for c in cells):  # the interval and seed spread under the value
                lines.append(" & ".join(c[1] for c in cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)

    def latex(self) -> str:
        if self.latex_columns is not None:
            keep = self.latex_columns
            return Table(self.name, self.title, self.caption, [self.columns[i] for i in keep],
                         [[r[i] for i in keep] for r in self.rows], self.data, self.stubs,
                         notes=self.notes).latex()
        label = re.sub(r"[^A-Za-z0-9:-]", "-", f"tab:{self.name}")
        caption = tex_escape(" ".join(self.caption))
        tabulars = (r"\par\medskip" + "\n").join(self._tabular(b) + "\n" for b in self._blocks())
        notes = "".join(rf"\par\smallskip{{\scriptsize {tex_escape(n)}}}" + "\n"
                        for n in self.notes)
        return (f"% {self.name}: written by bilora-bench (bilora.report); "
                "needs \\usepackage{booktabs}\n"
                "\\begin{table}[htbp]\n\\centering\n\\footnotesize\n"
                "\\setlength{\\tabcolsep}{3pt}\n"
                f"\\caption{{\\textbf{{{tex_escape(self.title)}}} {caption}}}\n"
                f"\\label{{{label}}}\n{tabulars}{notes}\\end{{table}}\n")
