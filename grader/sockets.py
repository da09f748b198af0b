"""Bytes that moved between the ranks, counted by the kernel: the evidence of a case's communication.

The parent asks the kernel (a sock_diag netlink dump, what `ss -ti` reads)
for every TCP socket of the ranks' network namespace and the counters of
each connection: bytes acknowledged by the peer, bytes received. A socket
belongs to the rank whose process holds it (its inode among the rank's open
descriptors), and its peer is the rank that holds the other end. Nothing in
a rank can change these counts but sending or receiving real bytes, and
every way of moving them (a torch.distributed wrapper, the ProcessGroup's
own methods, functional collectives, a raw socket) is counted the same.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import defaultdict
from typing import Iterable

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
INET_DIAG_INFO = 2
TCP_TIME_WAIT = 6
# every state but TIME_WAIT: a closed connection's leftover has no socket (inode 0) nor counters, and
# in a pool's namespace they are about half of the table a grade leaves
STATES = 0xFFFFFFFF & ~(1 << TCP_TIME_WAIT)
CLONE_NEWNET = 0x40000000
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, u64 each
BYTES_ACKED, BYTES_RECEIVED = 120, 128


def open_diag(netns_of: int | None = None) -> socket.socket:
    """A sock_diag socket in the network namespace of process `netns_of` (None: this process's own)."""
    if netns_of is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open(f"/proc/{os.getpid()}/task/{_gettid()}/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{netns_of}/ns/net", os.O_RDONLY)
    try:
        # setns moves this thread only; the socket keeps the namespace it was made in
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the ranks' network namespace")
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the grader's network namespace")
    finally:
        os.close(own)
        os.close(target)


def _gettid() -> int:
    return getattr(os, "gettid", lambda: os.getpid())()


End = tuple[bytes, int]  # (address, port): an IPv4 address (or an IPv6 one mapping it) in 4 bytes
V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _end(address: bytes, port: int, family: int) -> End:
    if family == socket.AF_INET:
        address = address[:4]
    elif address[:12] == V4_MAPPED:
        address = address[12:]
    return address, port


def connections(diag: socket.socket) -> dict[int, tuple[tuple[End, End], int, int]]:
    """inode -> ((local end, remote end), bytes acked, bytes received) for every TCP socket (IPv4 and 6).

    An end is its address and port, an IPv4 one in 4 bytes whether its socket is IPv4 or IPv6 (the
    store's sockets are IPv6 ones that hold IPv4 addresses)."""
    found = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, STATES)
        req += b"\0" * 48  # inet_diag_sockid: any
        header = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        diag.sendto(header + req, (0, 0))
        done = False
        while not done:
            data = diag.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NLMSG_DONE:
                    done = True
                    break
                if kind == NLMSG_ERROR:
                    raise OSError("sock_diag refused the dump")
                body = off + 16
                sport, dport = struct.unpack_from(">HH", data, body + 4)
                local = _end(data[body + 8:body + 24], sport, family)
                remote = _end(data[body + 24:body + 40], dport, family)
                inode = struct.unpack_from("=I", data, body + 68)[0]
                acked = received = 0
                attr = body + 72
                while attr + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, attr)
                    if alen < 4:
                        break
                    if atype == INET_DIAG_INFO and alen >= 4 + BYTES_RECEIVED + 8:
                        acked, received = struct.unpack_from("=QQ", data, attr + 4 + BYTES_ACKED)
                    attr += (alen + 3) & ~3
                if inode:
                    found[inode] = ((local, remote), acked, received)
                off += (length + 3) & ~3
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


Traffic = dict[int, dict[int, list[int]]]  # rank -> peer rank -> [bytes sent, bytes received]


def owners(pids: dict[int, int]) -> dict[int, int]:
    """socket inode -> the rank holding it."""
    return {inode: rank for rank, pid in pids.items() for inode in socket_inodes(pid)}


def traffic(diag: socket.socket, pids: dict[int, int], known: dict[int, int] | None = None,
            fresh: Iterable[int] = ()) -> Traffic:
    """Per rank and peer, the bytes its connections have carried since they were opened.

    `known` is an earlier owners() map, `fresh` ranks whose sockets are read again on top of it (a
    socket opened since by another rank counts under peer -1: not a rank). A connection whose other
    end no rank holds is counted under peer -1.
    """
    conns = connections(diag)
    if known is None:
        owner = owners(pids)
    else:
        owner = dict(known)
        for rank in fresh:
            owner.update({inode: rank for inode in socket_inodes(pids[rank])})
    # Only both ends name one connection: connect() gives two sockets the same local port when they
    # reach different peers, and IPv4 and IPv6 draw port numbers independently.
    connection_owner = {ends: owner[inode] for inode, (ends, _, _) in conns.items() if inode in owner}
    found: Traffic = {rank: defaultdict(lambda: [0, 0]) for rank in pids}
    for inode, ((local, remote), acked, received) in conns.items():
        rank = owner.get(inode)
        if rank is None or not (acked or received):
            continue
        cell = found[rank][connection_owner.get((remote, local), -1)]
        cell[0] += acked
        cell[1] += received
    return {rank: dict(peers) for rank, peers in found.items()}


def since(after: Traffic, before: Traffic) -> Traffic:
    """What moved between two readings (connections opened in between count from zero)."""
    out: Traffic = {}
    for rank, peers in after.items():
        out[rank] = {}
        for peer, (s, r) in peers.items():
            s0, r0 = before.get(rank, {}).get(peer, (0, 0))
            if s - s0 or r - r0:
                out[rank][peer] = [max(0, s - s0), max(0, r - r0)]
    return out
