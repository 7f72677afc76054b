"""torch.nn modules of d2lflow (no I/O, no training loops)."""
