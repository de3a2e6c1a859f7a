"""The server's half of ``%use_image``: validate a kernel's requests (``control_requests``) and move it between images (``mover``)."""
