"""The session's pin: its state, the session options, the pin file, image aliases, and how a pin stamps jobs.

``state`` (the pin, and whether this process runs in the image), ``options``
(the four ``%use_image`` options, one definition), ``pin_file`` (``.envpin.json``),
``aliases`` (short names for references), ``stamping`` (the adapter registry and
``pin_session``, the one way a pin takes effect).
"""
