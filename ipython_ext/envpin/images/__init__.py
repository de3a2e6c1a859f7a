"""Image names: the one reference parser (``references``) and the ``allowed_images`` rule (``allowlist``)."""
