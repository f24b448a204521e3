"""View: turning search results into something to look at.

``gallery`` (a self-contained HTML page), ``preview`` (thumbnails in the terminal),
``thumbnails`` (the small images both, and ``retllm serve``, show) and ``display``
(untrusted strings made safe to print).
"""
