"""A container made by envpin's own code (``container_spec.base_options``, ``dialect.create``) in a process that
then exits (tests/security/test_ownership.py): ``python -c PROGRAM IMAGE ROLE [KERNEL_ID]``; prints its id."""

import sys

from envpin.host import dialect, images
from envpin.host.container_spec import base_options

client = images.client()
image = client.images.get(sys.argv[1])
options = base_options(
    image_id=image.id,
    reference=sys.argv[1],
    immutable=image.id,
    role=sys.argv[2],
    mount_envpin=False,
    extra_labels={"envpin.kernel-id": sys.argv[3]} if sys.argv[3] else None,
)
container = dialect.create(client, entrypoint=["python3", "-c", "import time; time.sleep(600)"], **options)
container.start()
print(container.id)
