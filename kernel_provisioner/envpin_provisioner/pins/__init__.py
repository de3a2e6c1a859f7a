"""Pins on the server's side: they follow their notebook through what Jupyter does to its files."""
