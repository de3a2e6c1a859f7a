"""Jobs run in the pinned image: ``ContainerExecutor`` and its workers, the socket, the checked pickle envelope.

``executor`` (the ``concurrent.futures`` interface), ``worker_hosts`` (workers as
processes or as containers), ``listener`` (the executor's socket), ``worker`` (the job
loop inside the image), ``envelope`` (check where a pickle was made before loading it),
``shipping`` (which modules a job needs).
"""
