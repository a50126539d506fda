"""What every tab of the page shares: status lines that look like what they are (an error is red,
with its own label, never in a result's grey box), and handlers that turn any failure into such a
line with the tab's outputs cleared, logging a user's mistake at debug level without a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from llmapps.errors import LlmappsError
from llmapps.ui.session import error_text

log = logging.getLogger(__name__)

CSS = """
.gradio-container {max-width: 1200px !important}
footer {display: none !important}
.status-error textarea, .status-error input {
  color: #8a1020 !important; background: #fdecee !important; border-color: #c62839 !important;
  font-weight: 600;
}
.status-error label span, .status-error span[data-testid="block-info"] {color: #8a1020 !important}
.status-ok textarea {color: #1d4d1f}
.unavailable {color: #666; font-size: 0.9em}
.unavailable li {margin: 0.2em 0}
.unavailable .name {font-weight: 600; text-decoration: line-through}
.stats table, .grid table {font-variant-numeric: tabular-nums}
#batch-table, #results-grid {max-width: 100%; overflow-x: auto}
.rate-keys button {min-width: 7em}
"""


#: marks an error status line: "Error: ..." or "<strategy>: error: ..." (``status_line``)
ERROR_PATTERN = r"^(Error\b|error: |[^\n]*?: error: )"


def ok(text: str) -> str:
    """A status line for a success (the page shows it plainly)."""
    return text


def bad(text: str) -> str:
    """A status line for a failure: it starts with "Error", which the page's script
    (``STATUS_SCRIPT``) shows in red, so it never reads as a result. A plain string, so API
    clients get text too."""
    return text if re.match(ERROR_PATTERN, text) else f"Error: {text}"


#: colours each status box whose line is an error (the values stay plain text for API clients)
STATUS_SCRIPT = (
    "<script>\n(() => {\n"
    f"  const error = new RegExp({json.dumps(ERROR_PATTERN)});\n"
    "  const paint = () => {\n"
    "    for (const box of document.querySelectorAll('[id$=status]')) {\n"
    "      const field = box.querySelector('textarea, input');\n"
    "      if (!field) continue;\n"
    "      const isError = error.test(field.value);\n"
    "      box.classList.toggle('status-error', isError);\n"
    "      box.setAttribute('data-error', isError ? 'true' : 'false');\n"
    "    }\n"
    "  };\n"
    "  setInterval(paint, 200);\n"
    "})();\n</script>"
)


def safe(fn: Callable[..., Any], cleared: Sequence[Any], status_index: int) -> Callable[..., Any]:
    """``fn`` with any exception turned into an error line at ``status_index`` and every other
    output set to its ``cleared`` value (a previous result never stays beside an error).

    Our own errors (a user's mistake, a missing model) are said in the page and logged at debug
    level; anything else is logged with its traceback, and the page says it in words.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if isinstance(err, LlmappsError):
                log.debug("ui: %s refused: %s", fn.__name__, err)
            else:
                log.warning("ui: %s failed: %s", fn.__name__, err, exc_info=True)
            out = list(cleared)
            out[status_index] = bad(error_text(err))
            return tuple(out) if len(out) > 1 else out[0]

    return wrapper


def unavailable_html(items: Sequence[tuple[str, str]]) -> str:
    """The strategies that cannot run, each with its reason, as escaped HTML (a greyed list)."""
    import html

    if not items:
        return ""
    lis = "".join(
        f"<li><span class='name'>{html.escape(n)}</span> cannot run here: {html.escape(r)}</li>"
        for n, r in items
    )
    return f"<div class='unavailable'><p>Not available here:</p><ul>{lis}</ul></div>"


def stats_table(label: str, elem_id: str, **kwargs: Any) -> Any:
    """A read-only table of figures (win rates, a run's summary), wrapped, styled ``stats``."""
    import gradio as gr

    return gr.Dataframe(
        interactive=False, wrap=True, label=label, elem_id=elem_id, elem_classes=["stats"], **kwargs
    )
