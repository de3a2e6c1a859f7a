"""Warm kernels: containers waiting with ipykernel imported (``pool``), and what one kernel does with them (``standbys``)."""
