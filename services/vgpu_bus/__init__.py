"""vgpu_bus: the mediated-device bus (mdev core): parents, types, devices, definitions, events."""
