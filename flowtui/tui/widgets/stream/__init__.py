"""The live flow table."""
