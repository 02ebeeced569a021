"""Figures, ``report.md`` and ``report.html`` for a run (SPEC section 10).

* :mod:`~interp_ext.report.compose`: :func:`~interp_ext.report.compose.write_report`, the page
  from every family's section;
* :mod:`~interp_ext.report.draw`: what a family's section draws with (selections, traces,
  panels, the default section);
* :mod:`~interp_ext.report.webpage`: ``report.html``, the same text with every figure inline.

This package imports nothing, so a family's section reads :mod:`~interp_ext.report.draw`
without loading the report that reads every family. From Python: ``interp_ext.write_report``.
"""
