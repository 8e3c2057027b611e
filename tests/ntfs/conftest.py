"""The NTFS tests use the session fixture ``ntfs_image`` from tests/conftest.py."""
