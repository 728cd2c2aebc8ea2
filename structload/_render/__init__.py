"""What a person reads: reports and checkpoints drawn with rich, and the wording of messages (see README.md)."""
