"""The web app, ``llmapps ui``: try an app, compare strategies side by side, rate outputs blinded.

``llmapps.ui.session`` does the work without a web framework; ``llmapps.ui.app`` is the Gradio
page on top (the optional extra ``pip install 'llmapps[ui]'``). An app labels its inputs and
outputs through ``AppSpec.ui`` (a ``UiSpec``); the Rate tab stores ratings with
``llmapps.evaluate.human.RatingStore``, the store ``llmapps human-eval import`` reads.
"""
