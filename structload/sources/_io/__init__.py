"""How a file's bytes reach tensor memory, for local files and URLs alike (see README.md)."""
