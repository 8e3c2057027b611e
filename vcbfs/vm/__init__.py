"""A VM snapshot as a model: its configuration, disks, volumes and drive letters."""
