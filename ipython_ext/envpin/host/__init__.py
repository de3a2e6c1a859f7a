"""The one Docker layer, used by both sides: the client and its errors, the Docker/Podman dialect, images, labels.

``docker_client`` (engine address, one client per address, "cannot reach the engine" in
plain words), ``dialect`` (the only place a container is created: Docker or Podman),
``images`` (resolve an image, run a probe), ``container_spec`` (what every envpin
container has in common), ``labels`` (ownership labels and their proof), ``respawn``
(``envpin.use_image()`` and ``envpin run`` on a host).  The Docker SDK is imported lazily:
the kernel side must import without it.
"""
