"""Worked examples: ``custom_net`` is the module behind ``model=custom`` (README)."""
