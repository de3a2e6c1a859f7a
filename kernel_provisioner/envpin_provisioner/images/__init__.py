"""Which image a kernel starts in (``selection``), resolving and pulling it (``pulling``), and the pulls a kernel may cause (``pull_budget``)."""
