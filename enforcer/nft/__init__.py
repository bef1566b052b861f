"""nftables: the compiler's intermediate form, the compiler, and the backends that apply it."""
