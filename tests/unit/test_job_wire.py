"""The job wire's fast paths keep what the slow ones did: a connection read ahead delivers the same frames
(and EOF, and large frames in their own memory), a header parsed once is still checked each time, and a
result the standard pickler cannot take by reference still travels by value."""

from __future__ import annotations

import socket
import threading

import pytest

from envpin.jobs import envelope, worker


def _pair():
    a, b = socket.socketpair()
    return a, b


def test_a_read_ahead_connection_delivers_each_message_whole_with_one_recv_for_a_small_one():
    a, b = _pair()
    try:
        messages = [envelope.dumps(("ok", i, None), "result") for i in range(3)]
        a.sendall(b"".join(bytes(f) for m in messages for f in m))  # three messages in one write
        calls = []

        class Counting:
            def recv_into(self, view, n):
                calls.append(n)
                return b.recv_into(view, n)

        receiver = worker.Receiver(Counting())  # type: ignore[arg-type]
        got = [envelope.read_frames(receiver, frozenset({"result"})) for _ in range(3)]
        values = [envelope.loads(h, p, bufs, "job result")[1] for h, p, bufs in got]
        assert values == [0, 1, 2]
        assert len(calls) == 1  # the three small messages came in with one read
        a.close()
        with pytest.raises(EOFError):
            receiver(8)
    finally:
        a.close()
        b.close()


def test_a_frame_larger_than_the_read_ahead_arrives_whole_in_its_own_writable_buffer():
    import numpy as np

    a, b = _pair()
    try:
        array = np.arange(200_000, dtype=np.float64)  # 1.6 MB out of band, far above the read-ahead
        frames = envelope.dumps(("ok", array, None), "result")
        sender = threading.Thread(target=worker.send_frames, args=(a, frames))
        sender.start()
        header, payload, buffers = envelope.read_frames(worker.Receiver(b), frozenset({"result"}))
        sender.join()
        status, back, _ = envelope.loads(header, payload, buffers, "job result")
        assert status == "ok" and np.array_equal(back, array)
        back[0] = -1.0  # received into memory of its own: writable, as before
    finally:
        a.close()
        b.close()


def test_a_header_parsed_before_is_still_checked_and_each_caller_gets_its_own_dict():
    data = b'{"kind": "result", "env": {"python": "3.11"}}'
    first = envelope.parse_header(data, frozenset({"result"}))
    first["kind"] = "changed"
    assert envelope.parse_header(data, frozenset({"result"}))["kind"] == "result"
    with pytest.raises(envelope.ProtocolError):
        envelope.parse_header(data, frozenset({"job"}))  # the same text, another expected kind: refused
    with pytest.raises(envelope.ProtocolError):
        envelope.parse_header(b"[1, 2]")


def test_a_result_the_standard_pickler_cannot_take_travels_by_value_and_plain_data_by_the_standard_one(
    monkeypatch,
):
    import cloudpickle

    factor = 7
    frames = envelope.dumps_plain_first(("ok", lambda v: v * factor, None), "result")
    header, payload, buffers = envelope.read_frames(_reader(frames))
    assert envelope.loads(header, payload, buffers, "job result")[1](2) == 14

    def no_cloudpickle(*args, **kwargs):
        raise AssertionError("plain data went through cloudpickle")

    monkeypatch.setattr(cloudpickle, "dumps", no_cloudpickle)
    plain = envelope.dumps_plain_first(("ok", {"a": [1, 2.5, "x"]}, None), "result")
    header, payload, buffers = envelope.read_frames(_reader(plain))
    assert header["env"]["pickler"] == "cloudpickle"  # the envelope names the same sender either way
    assert envelope.loads(header, payload, buffers, "job result") == ("ok", {"a": [1, 2.5, "x"]}, None)


def _reader(frames):
    data = b"".join(bytes(f) for f in frames)
    position = 0

    def read(n):
        nonlocal position
        chunk, position = data[position : position + n], position + n
        return chunk

    return read
