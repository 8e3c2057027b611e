"""Windows knowledge over an NTFS volume: the SYSTEM hive and the guest's drive letters."""
