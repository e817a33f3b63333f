"""Read-time step selection: the ``selection`` group applied to scored traces (rules, labels, statistics)."""
