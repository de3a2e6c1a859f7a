"""The ``envpin`` command: ``main`` (argument parsing), ``launch``, ``doctor``, ``kernelspec``."""
