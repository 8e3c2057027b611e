"""Tests of the Windows layer: the SYSTEM hive and drive letters."""
