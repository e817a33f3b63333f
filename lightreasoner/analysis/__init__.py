"""Reading finished runs: the sweep report (tables, plots, head-to-head, format audit) and the expertise-gap helpers. Imports no torch."""
