"""vgpusim.cli: the ``vgpusim`` launcher (up/down/status/demo/bench/sysfs-exec) and ``vgpuctl``."""
