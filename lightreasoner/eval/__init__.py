"""Evaluation: the stage (:mod:`.evaluate`), its statistics (:mod:`.stats`, numpy only) and its
tables (:mod:`.tables`). ``stats`` and ``tables`` import no torch, so the sweep report can use them."""
