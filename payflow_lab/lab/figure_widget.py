"""A plotly ``FigureWidget`` whose first message to the browser is the whole figure.

plotly.py's :class:`plotly.graph_objects.FigureWidget` opens its comm (the
widget's channel to the browser) before it copies in its layout and data, so
the browser first learns of a figure with an empty layout, and the real one
follows as an update. The browser applies that update asynchronously. A view
drawn in between — it happens on a busy laptop, about once in sixteen Run Alls
of lesson 03 with one core kept busy — draws the empty figure: no panels, no
titles, and a story-time axis typed ``linear`` because nothing says ``date``.
The view never looks at the layout again (later changes arrive as
relayout/restyle messages on top of what it drew), so the dashboard stays
wrong until the cell is run again.

:class:`FigureWidget` here holds the comm back until plotly's constructor has
finished, then opens it once with the complete state. Nothing else changes:
every later update travels exactly as before. No maintained library offers
this; the fix belongs in plotly.py, and this class goes away when it lands
there (``tests/test_lab.py`` checks the first message carries the layout).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go


class FigureWidget(go.FigureWidget):
    """``go.FigureWidget`` that opens its comm only once its layout and data are set (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._payflow_constructing = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._payflow_constructing = False
        self.open()

    def open(self) -> None:
        """Open the comm, unless the constructor is still filling in the figure (it opens it at the end)."""
        if getattr(self, "_payflow_constructing", False):
            return
        super().open()
