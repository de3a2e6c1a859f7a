"""Kernels on an engine of another machine: envpin's package as a volume there, channels through SSH."""
