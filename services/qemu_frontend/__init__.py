"""qemu_frontend: VMs with guest RAM, the VFIO device API, interrupts and the built-in guest driver."""
