"""NTFS: a read-only reader over a volume byte source."""
