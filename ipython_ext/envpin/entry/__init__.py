"""Modules run inside images, always through ``boot`` (which keeps the working folder off ``sys.path``).

``boot`` (the bootstrap every process envpin starts runs), ``pid1`` (an init for
engines without one), ``warm_kernel`` (a pooled container waiting to become a kernel),
``job_worker`` (a job worker's entry).  Their names are in ``envpin.names``.
"""
