"""VMDK: descriptors, extents (flat, hosted sparse, COWD, SEsparse) and delta chains."""

from vcbfs.blocks.vmdk.disk import VirtualDisk, open_disk

__all__ = ["VirtualDisk", "open_disk"]
