"""gfx_host: the host graphics driver (GVT-g-like device model, GTT shadow, audit, arbiter)."""
