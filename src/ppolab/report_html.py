"""Building blocks of ``report.html``: one self-contained HTML page (inline CSS, plots as PNG data URIs).

Plots are drawn with matplotlib's object API (``matplotlib.figure.Figure``: no pyplot state, no backend switch),
every text is escaped with ``html.escape``; the page needs no script and no network.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Iterable, Sequence

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1180px;
       padding: 0 1rem; color: #1d2430; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #d6dbe3; padding-bottom: 0.3rem; }
.meta { color: #5b6575; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #d6dbe3; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8rem; }
figure.plot { margin: 0; } figure.plot img { max-width: 100%; border: 1px solid #e3e7ee; }
figcaption { font-size: 0.8rem; color: #5b6575; }
.note { color: #8a5a00; } video, img.video { max-width: 640px; border: 1px solid #d6dbe3; }
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(v, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, None/NaN as an em dash."""
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, list | tuple):
        return ", ".join(fmt(x, digits) for x in v) if len(v) <= 8 else f"[{len(v)} values]"
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence], table_id: str = "") -> str:
    """An HTML table; cells are formatted with ``fmt`` and escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>\n" for r in rows)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def kv_table(pairs: Iterable[tuple[str, object]], table_id: str = "") -> str:
    return table(("key", "value"), [(k, v) for k, v in pairs], table_id)


def figure(width: float = 6.4, height: float = 3.6):
    """(Figure, Axes) without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def figure_html(fig, name: str, caption: str = "") -> str:
    """``fig`` as an embedded PNG inside ``<figure class="plot" data-plot=NAME>``."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure class="plot" data-plot="{esc(name)}"><img alt="{esc(caption or name)}" '
            f'src="data:image/png;base64,{data}">{cap}</figure>')


def line_plot(name: str, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str = "",
              hline: tuple[float, str] | None = None, size: tuple[float, float] = (6.4, 3.6)) -> str:
    """One axes, a line per entry of ``series`` ({label: (xs, ys)}); a legend for 2..12 lines."""
    fig, ax = figure(*size)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, lw=1.2, label=label)
    if hline is not None and math.isfinite(hline[0]):
        ax.axhline(hline[0], color="gray", ls="--", lw=0.8, label=hline[1])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title or ylabel, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if 1 < len(series) + (hline is not None) <= 13:
        ax.legend(fontsize=7)
    return figure_html(fig, name, title or ylabel)


def image_file_html(path, name: str, caption: str = "") -> str:
    """A PNG file of the directory, embedded."""
    data = base64.b64encode(path.read_bytes()).decode()
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure class="plot" data-plot="{esc(name)}"><img alt="{esc(caption or name)}" '
            f'src="data:image/png;base64,{data}">{cap}</figure>')


def video_html(path, max_bytes: int = 32 << 20) -> str:
    """An MP4 as ``<video>``, a GIF as ``<img>``, embedded; a larger file is linked (relative path) instead."""
    size = path.stat().st_size
    if size > max_bytes:
        return (f'<p class="note">{esc(path.name)} ({size / 2**20:.0f} MiB) is too large to embed: '
                f'<a href="videos/{esc(path.name)}">open it</a></p>')
    data = base64.b64encode(path.read_bytes()).decode()
    if path.suffix == ".gif":
        return f'<img class="video" alt="episode" src="data:image/gif;base64,{data}">'
    return (f'<video id="episode" controls muted loop playsinline preload="auto" '
            f'src="data:video/mp4;base64,{data}"></video>')


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are (id, heading, inner HTML)."""
    from ppolab import __version__

    body = "\n".join(f'<section id="{esc(i)}"><h2>{esc(h)}</h2>\n{inner}\n</section>' for i, h, inner in sections)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f'<p class="meta">{esc(subtitle)} · written by ppolab {esc(__version__)} on {esc(stamp)}</p>\n'
            f"{body}\n</body></html>\n")
