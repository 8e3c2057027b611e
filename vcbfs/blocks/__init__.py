"""The sector-reader core: byte sources (local, HTTPS, cached), VMDK disks and partitions."""
