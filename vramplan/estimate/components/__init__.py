"""One file per memory term, every variant of the term inside (estimate/README.md maps each term to its file)."""
