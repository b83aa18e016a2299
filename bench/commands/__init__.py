"""One thin module per CLI command: each parses nothing itself (``bench.cli`` does) and turns the
parsed flags into a call of the library that does the work."""
