"""envpin_provisioner.images.pulling: the server reads references with the kernel side's parser and refuses an
invalid one by name."""

from __future__ import annotations

import pytest


def test_the_server_reads_references_with_the_same_parser():
    from envpin_provisioner.images import pulling

    assert pulling._split("localhost:5000/img") == ("localhost:5000/img", "latest")
    assert pulling._split("localhost:5000/img:2") == ("localhost:5000/img", "2")


def test_an_invalid_reference_is_refused_by_name():
    from envpin_provisioner.errors import InvalidImageReference
    from envpin_provisioner.images.pulling import check_reference

    with pytest.raises(InvalidImageReference, match="Python:3.11"):
        check_reference("Python:3.11")
