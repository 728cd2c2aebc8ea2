"""One module per file format, each giving a `SourceTree` of lazy leaves (see README.md)."""
