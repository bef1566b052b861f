"""The what-if editor."""
