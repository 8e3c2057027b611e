"""vcbfs: a VMware Consolidated Backup proxy for Linux, as a read-only FUSE file system."""

__version__ = "0.1.0"
