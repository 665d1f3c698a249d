"""The operator's status page at ``/``: sampler and rings, the page's data, its view, its HTML.

``sampler`` keeps the fixed-size history; ``data`` reads the live objects; ``view`` turns
that into display text and sparkline paths (the one place that formats); ``render``
builds the HTML and its Content-Security-Policy; the page's script only copies the
view's text into the DOM on each refresh.
"""
