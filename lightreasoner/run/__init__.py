"""Entry points and orchestration: the command line's preflight, validation, the pipeline of stages, resume, the pair diagnostic, cache bundles."""
