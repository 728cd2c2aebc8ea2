"""`align`: matching two implementations of one model by structure, written as `rename` + `convert` (see README.md)."""
