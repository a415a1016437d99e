"""Independent pure-Python reference of the kernel clock math (never imports kvmclock)."""
