"""The ground floor: the method's math (contrast, cross-tokenizer alignment), config plumbing and atomic file writers. Imports nothing else of the package."""
