"""grader.sockets names each connection's peer by both its ends, addresses and ports.

One local port can belong to two ranks at once: connect() reuses a local port
for sockets that reach different peers, and IPv4 and IPv6 number their ports
independently. A peer looked up by the remote port alone then charges one
rank's traffic to another: "rank 4 received 7340704 bytes from rank 2" on the
kit's own striped ring, which sends to rank 4 from rank 3 only.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from grader import sockets


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _listen_on_one_port_in_both_families() -> tuple[socket.socket, socket.socket]:
    for _ in range(20):
        v4 = socket.create_server(("127.0.0.1", 0))
        try:
            v6 = socket.create_server(("::1", v4.getsockname()[1]), family=socket.AF_INET6)
        except OSError as err:
            v4.close()
            if err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):  # no IPv6 on lo: no collision
                pytest.skip(f"no IPv6 loopback here: {err}")
            continue
        return v4, v6
    raise AssertionError("no port number free in both families after 20 tries")


def _send(client: socket.socket, server: socket.socket, nbytes: int) -> None:
    client.sendall(b"x" * nbytes)
    got = 0
    while got < nbytes:
        got += len(server.recv(nbytes - got))


def _received(moved: dict) -> dict:
    return {rank: {peer: r for peer, (_, r) in peers.items() if r} for rank, peers in moved.items()}


def test_two_connections_from_one_local_port_are_two_peers():
    a, b = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    c1, c2 = socket.socket(), socket.socket()
    for client in (c1, c2):  # what connect() does on its own when two peers differ
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c1.bind(("127.0.0.1", 0))
    c2.bind(c1.getsockname())
    c1.connect(a.getsockname())
    c2.connect(b.getsockname())
    s1, _ = a.accept()
    s2, _ = b.accept()
    _send(c1, s1, 700)
    _send(c2, s2, 900)
    owner = {_inode(a): 0, _inode(s1): 0, _inode(c1): 1, _inode(c2): 2, _inode(b): 3, _inode(s2): 3}
    with sockets.open_diag() as diag:
        moved = sockets.traffic(diag, {r: os.getpid() for r in range(4)}, known=owner)
    assert _received(moved) == {0: {1: 700}, 1: {}, 2: {}, 3: {2: 900}}
    for sock in (a, b, c1, c2, s1, s2):
        sock.close()


def test_one_port_number_in_two_families_is_two_peers():
    v4, v6 = _listen_on_one_port_in_both_families()
    port = v4.getsockname()[1]
    c4 = socket.create_connection(("127.0.0.1", port))
    s4, _ = v4.accept()
    c6 = socket.create_connection(("::1", port))
    s6, _ = v6.accept()
    # an IPv6 socket reaching the IPv4 listener sees it at ::ffff:127.0.0.1: the same end as c4's peer
    mapped = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    mapped.connect(("::ffff:127.0.0.1", port))
    s_mapped, _ = v4.accept()
    owner = {_inode(v4): 0, _inode(s4): 0, _inode(s_mapped): 0, _inode(c4): 1,
             _inode(v6): 2, _inode(s6): 2, _inode(c6): 3, _inode(mapped): 4}
    _send(c4, s4, 1000)
    _send(c6, s6, 3000)
    _send(mapped, s_mapped, 500)
    with sockets.open_diag() as diag:
        moved = sockets.traffic(diag, {r: os.getpid() for r in range(5)}, known=owner)
    assert _received(moved) == {0: {1: 1000, 4: 500}, 1: {}, 2: {3: 3000}, 3: {}, 4: {}}
    # the connecting side's acked count includes its SYN: one byte more than it sent
    sent = {rank: {peer: s for peer, (s, _) in peers.items() if s > 1} for rank, peers in moved.items()}
    assert sent == {0: {}, 1: {0: 1001}, 2: {}, 3: {2: 3001}, 4: {0: 501}}
    for sock in (v4, v6, c4, s4, c6, s6, mapped, s_mapped):
        sock.close()
