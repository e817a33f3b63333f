"""Model references and loading: a checkpoint's spec, the expert/amateur pair's settings, tiny models for tests and the demo."""
