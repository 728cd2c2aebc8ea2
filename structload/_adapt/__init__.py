"""The `adapt=` step: source tensors of another shape adapted by the adapters of `structload.adapt` (see README.md)."""
