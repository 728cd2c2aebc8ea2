"""What a load will do, decided before anything is written: walk, select, rules, ties, problems (see README.md)."""
