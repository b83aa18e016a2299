"""The one PNG writer of the reports (CD diagram, trade-off plots, tuning plot): a matplotlib
``Figure`` on the Agg canvas (never pyplot's global state or the user's backend), saved without
timestamps or version metadata, so the same figure gives the same bytes on every run.
"""
from __future__ import annotations

import io


def figure(width: float, height: float, dpi: int = 100):
    """A new ``Figure`` of ``width`` x ``height`` inches, drawn by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, without the 'Software' (matplotlib version) metadata."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
