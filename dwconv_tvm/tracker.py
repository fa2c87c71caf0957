"""The TVM RPC tracker a tuning fleet measures through: its address, checked before tuning.

MetaSchedule's RPC runner connects in worker threads: an address where no tracker listens, or a
device key no server registered, shows up there as stack traces per candidate (or as a wait
without end), and the tuning run ends with no records. Checking once, up front, turns those
into one clear error.
"""

from __future__ import annotations

import socket
import struct
import time

CONNECT_TIMEOUT_S = 10.0
# A server started just before the tuner (the loopback test's) registers with the tracker a
# moment after it listens.
REGISTRATION_WAIT_S = 10.0


def parse_tracker(rpc_tracker: str | None, rpc_key: str | None) -> tuple[str, int, str] | None:
    """`("host", port, key)` from the tuner's `rpc_tracker` and `rpc_key`, or None for neither.

    Raises:
        ValueError: If only one is given, or the address is not `host:port` with a port in 1-65535.
    """
    if rpc_tracker is None:
        if rpc_key is not None:
            raise ValueError("`rpc_key` needs `rpc_tracker` ('host:port').")
        return None
    host, _, port = str(rpc_tracker).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or not rpc_key:
        raise ValueError(
            "`rpc_tracker` must be 'host:port' (port 1-65535) and `rpc_key` the device key registered with it. "
            f"Received: rpc_tracker={rpc_tracker!r}, rpc_key={rpc_key!r}"
        )
    return host, int(port), str(rpc_key)


def check_tracker(host: str, port: int, key: str) -> None:
    """Checks that a TVM RPC tracker answers at `host:port` and knows the device key `key`.

    Raises:
        ValueError: If nothing answers there, it is not a TVM RPC tracker, or no server has
            registered `key` with it (the message lists the keys it has).
    """
    address = f"{host}:{port}"
    deadline = time.monotonic() + REGISTRATION_WAIT_S
    while True:
        keys = _registered_keys(host, port, address)
        if key in keys:
            return
        if time.monotonic() > deadline:
            raise ValueError(
                f"No device is registered with the RPC tracker at `rpc_tracker`={address!r} under "
                f"`rpc_key`={key!r}. Keys registered there: {sorted(keys) or 'none'}."
            )
        time.sleep(0.5)


def _registered_keys(host: str, port: int, address: str) -> set[str]:
    from tvm.rpc import base

    not_a_tracker = ValueError(f"`rpc_tracker`={address!r} answers, but not as a TVM RPC tracker.")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            reply = None
            if struct.unpack("<i", base.recvall(sock, 4))[0] == base.RPC_TRACKER_MAGIC:
                base.sendjson(sock, [base.TrackerCode.SUMMARY])
                reply = base.recvjson(sock)
    except (OSError, struct.error) as err:  # refused, unknown host, timed out, closed early
        raise ValueError(f"Cannot reach a TVM RPC tracker at `rpc_tracker`={address!r}: {err}") from None
    except ValueError:  # a reply that is not JSON
        raise not_a_tracker from None
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == base.TrackerCode.SUCCESS
            and isinstance(reply[1], dict)):
        raise not_a_tracker
    summary = reply[1]
    servers = {str(s.get("key", "")).partition(":")[2] for s in summary.get("server_info", [])}
    return set(summary.get("queue_info", {})) | servers
