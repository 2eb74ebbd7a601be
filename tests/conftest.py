"""Test settings shared by the whole suite."""

from hypothesis import settings

# CI machines are small and shared: no per-example deadline, and the same examples on every run.
settings.register_profile("medcf", deadline=None, derandomize=True, max_examples=100)
settings.load_profile("medcf")
