"""Benchmarks, answer extraction and verification, prompts, and the record types that flow between stages."""
