"""Tables and figures built from the results of gating, SAE and steering runs."""
