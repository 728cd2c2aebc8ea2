"""Sharded destinations: DTensor local blocks, and the ranks' agreement after each step (see README.md)."""
