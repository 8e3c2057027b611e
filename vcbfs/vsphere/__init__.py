"""vSphere: sessions, inventory, snapshots, datastore access and the vSphere VM provider."""
