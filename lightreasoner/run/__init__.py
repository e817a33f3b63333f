"""Entry points and orchestration: the command line's preflight, validation, the orchestrator (main) and its stages, rounds, resume and summary, the pair diagnostic, cache bundles."""
