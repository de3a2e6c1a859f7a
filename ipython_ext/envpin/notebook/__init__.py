"""What a notebook user meets: ``%use_image`` and its display, short errors, and the move to another image.

``magics`` (``%use_image``), ``display`` (its table and the pull bar), ``short_errors``
(one paragraph under the cell), ``control`` (the kernel's half of the control-folder
conversation with the server), ``handoff`` (a running cell handed to the next kernel).
"""
