"""Floor 6: one module per command (scan, locate, eval, check/compare, harden, reference, doctor): each
validates its config before anything loads, runs the core on a backend and returns a JSON-ready report."""
