"""LightReasoner: a small amateur model teaches a large expert model to reason."""

__version__ = "0.1.0"
