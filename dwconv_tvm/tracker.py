"""The TVM RPC tracker a tuning fleet measures through: its address, checked before tuning,
and its device, watched while measurements wait.

MetaSchedule's RPC runner connects in worker threads: an address where no tracker listens, or a
device key no server registered, shows up there as stack traces per candidate (or as a wait
without end), and the tuning run ends with no records. Checking once, up front, turns those
into one clear error. A device that goes away during the run (unplugged, rebooted, its server
killed) leaves the runner's next request waiting at the tracker for ever: `DeviceWatch` asks
the tracker while a measurement is pending and gives up once the key has had no server for
`REGISTRATION_WAIT_S`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

CONNECT_TIMEOUT_S = 10.0
# A server started just before the tuner (the loopback test's) registers with the tracker a
# moment after it listens.
REGISTRATION_WAIT_S = 10.0
WATCH_INTERVAL_S = 2.0  # how often `DeviceWatch` asks the tracker while a measurement is pending


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
        keys = _registered_keys(host, port)
        if key in keys:
            return
        if time.monotonic() > deadline:
            raise ValueError(
                f"No device is registered with the RPC tracker at `rpc_tracker`={address!r} under "
                f"`rpc_key`={key!r}. Keys registered there: {sorted(keys) or 'none'}."
            )
        time.sleep(0.5)


def missing_device(host: str, port: int, key: str) -> str | None:
    """None while a server (or an RPC proxy's device) is registered with the tracker under
    `key`, busy or free; else why not: the tracker's answer or why it did not answer."""
    address = f"{host}:{port}"
    try:
        keys = _registered_keys(host, port)
    except ValueError as err:
        return str(err)
    return None if key in keys else f"no device is registered under `rpc_key`={key!r} at `rpc_tracker`={address!r} any more"


class DeviceWatch:
    """Watches one device key at a tracker while measurements wait for it.

    Args:
        host, port, key: The tracker and the device key (`parse_tracker`'s result).
        on_lost: Called once, with the reason, when the device is given up (e.g. to stop the
            tuner and end the runner's waiting worker processes).
    """

    def __init__(self, host: str, port: int, key: str, on_lost: Callable[[str], None]):
        self.host, self.port, self.key, self.on_lost = host, port, key, on_lost
        self.lost: str | None = None  # why the device was given up, once it was

    def wait(self, done: Callable[[], bool]) -> bool:
        """Waits until `done()`; False, without waiting on, once the device is lost (its key
        without a server for `REGISTRATION_WAIT_S`, which covers a server that restarts)."""
        next_check = time.monotonic() + WATCH_INTERVAL_S
        missing_since = None
        while not done():
            if self.lost is not None:
                return False
            time.sleep(0.005)
            now = time.monotonic()
            if now < next_check:
                continue
            next_check = now + WATCH_INTERVAL_S
            reason = missing_device(self.host, self.port, self.key)
            if reason is None:
                missing_since = None
            elif missing_since is None:
                missing_since = now
            elif now - missing_since >= REGISTRATION_WAIT_S:
                self.lost = reason  # set first: the runner's later futures fail without waiting
                self.on_lost(reason)
                return False
        return True


def _registered_keys(host: str, port: int) -> set[str]:
    """The device keys servers have registered with the tracker: `server:KEY` for an RPC
    server, `server:proxy[KEY,...]` for the devices of an RPC proxy. (Its queue list also
    names keys that clients only asked for, which no server may ever serve.)"""
    from tvm.rpc import base

    address = f"{host}:{port}"
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
    keys = set()
    for server in reply[1].get("server_info", []):
        name = str(server.get("key", "") if isinstance(server, dict) else "").partition(":")[2]
        if name.startswith("proxy[") and name.endswith("]"):
            keys.update(k for k in name[len("proxy["):-1].split(",") if k)
        elif name:
            keys.add(name)
    return keys
