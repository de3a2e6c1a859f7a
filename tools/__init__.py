"""Developer tooling: start a Docker engine, build the offline test and demo images.

Not part of the envpin distribution; used by ``scripts/``, the tests and CI.
"""
