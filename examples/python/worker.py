#!/usr/bin/env python3
"""A reuseport worker in plain Python: the same HTTP echo server as `reuseport echo`.

Written from docs/protocol.md alone, with the standard library only (Python 3.9+ for
socket.send_fds). Single-threaded on purpose, like a sync Python worker: `/sleep` blocks it,
which is what the daemon's policies are there to work around.

    python3 worker.py --listen 127.0.0.1:8080 [--control PATH] [--name NAME] [--weight N]
                      [--no-register] [--v6only]

IPv6: `--listen [::]:PORT` makes a dual-stack socket (IPV6_V6ONLY=0: IPv4 clients too), as the
daemon's IPv6 groups are by default; give `--v6only` when the daemon runs with `--v6only` (its
IPv6-only groups). The daemon refuses a socket of the other kind (`wrong_v6only`).

HTTP/1.1 with keep-alive: `GET /` answers `pid=<PID>\\n`, `GET /sleep?ms=N` answers the same
after N ms (at most 60 s), other paths 404, other methods 405.

Registration: the listening socket is sent to the daemon with the `register` line; the control
connection stays open for the worker's lifetime (closing it unregisters). Then a `counters`
request brings back a descriptor of a map of the worker's own (SCM_RIGHTS), which it maps with
mmap: in-flight requests, accepted connections and finished requests are written there, and the
steering program reads them at every new connection, with no system call per request. With a
daemon that has no such map to give, in-flight requests are reported with `load` lines around
each request instead, never waiting for the daemon (a report that does not fit in the socket
buffer is dropped). When the daemon goes away (the control connection
turns readable) the worker reconnects every 100 ms and registers again. A refusal at start-up is
printed and ends the worker with exit code 1; a worker started before the daemon, or one that a
restarted daemon refuses, logs the refusal once and keeps retrying every second (as `reuseport
echo` does).

Accepting: one connection per loop round, so the connections this single-threaded worker has not
taken yet stay in the kernel's queue, where the daemon can still move them to another worker if
this one blocks. When the daemon shuts the listener down (the worker was evicted as stuck, or
drained with `reuseport drain --close`), its queue moves to the other workers and the daemon
makes the same listener listen again at once: the worker keeps accepting on it. Only an accept()
that runs into the instant between the two fails with EINVAL; if the listener does not listen
again within a few milliseconds, the worker closes the old listener and control connection, binds
a new listener and registers it (as `reuseport echo` does), and keeps serving the connections it
already had.
"""

import argparse
import errno
import ipaddress
import json
import mmap
import os
import re
import select
import socket
import sys
import time

DEFAULT_CONTROL = "/run/reuseport/control.sock"
CONTROL_ENV = "REUSEPORT_CONTROL"
# Poll timeout: also how soon a migrated connection (which raises no readiness) is accepted.
TICK = 0.020
# While the daemon is away: how often to try to connect again.
RETRY = 0.100
# After a refusal from a restarted daemon: retry, but less often.
REFUSED_RETRY = 1.0
# How long a registration may wait for the daemon's reply.
REPLY_TIMEOUT = 2.0
MAX_LINE = 64 * 1024
MAX_HEAD = 16 * 1024
MAX_SLEEP_MS = 60_000
# After an accept() EINVAL, how many times (1 ms apart) to check whether the daemon made the
# listener listen again before binding a new one.
RELISTEN_CHECKS = 10
U64_MAX = 2**64 - 1
BACKLOG = 1024


def log(message):
    print(f"[worker {os.getpid()}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_listen(text):
    """`ADDR:PORT` or `[IPV6]:PORT` -> (family, sockaddr)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDR:PORT (IPv6: [ADDR]:PORT)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} is not an IP address") from None
    if text.startswith("[") != (addr.version == 6):
        raise argparse.ArgumentTypeError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
    port = int(port)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range")
    if addr.version == 6:
        return socket.AF_INET6, (str(addr), port, 0, 0)
    return socket.AF_INET, (str(addr), port)


def parse_u32(text):
    if not (text.isascii() and text.isdigit()) or int(text) > 0xFFFF_FFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in 0..=4294967295")
    return int(text)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="A single-threaded HTTP echo worker that joins a reuseport group."
    )
    p.add_argument("--listen", required=True, type=parse_listen, metavar="ADDR:PORT")
    p.add_argument(
        "--control",
        metavar="PATH",
        help=f"control socket of the daemon [default: ${CONTROL_ENV}, else {DEFAULT_CONTROL}]",
    )
    p.add_argument(
        "--no-register", action="store_true", help="serve without registering with the daemon"
    )
    p.add_argument("--name", help="name shown by `reuseport status`")
    p.add_argument("--weight", type=parse_u32, help="weight for the weighted policy (1..=1000)")
    p.add_argument(
        "--v6only",
        action="store_true",
        help="IPv6: an IPv6-only socket (IPV6_V6ONLY=1), for a daemon run with --v6only "
        "[default: dual-stack]",
    )
    args = p.parse_args(argv)
    args.control = args.control or os.environ.get(CONTROL_ENV) or DEFAULT_CONTROL
    return args


# ---------------------------------------------------------------------------------------------
# The listening socket


def bind_listener(family, sockaddr, v6only=False):
    """SO_REUSEPORT before bind(), as the kernel requires. IPV6_V6ONLY is set explicitly on IPv6
    sockets (dual-stack unless `v6only`), whatever the net.ipv6.bindv6only sysctl says: it
    decides which kernel reuseport group the socket joins."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        s.bind(sockaddr)
        s.listen(BACKLOG)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


# ---------------------------------------------------------------------------------------------
# The control connection


class NotRunning(Exception):
    """No daemon at the control path (ENOENT or ECONNREFUSED on connect)."""


class Refused(Exception):
    """The daemon answered the register request with "ok": false (or could not be asked)."""

    def __init__(self, code, message):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


def read_line(sock):
    """Reads one reply line (the daemon sends exactly one per request)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            raise Refused("closed", "the daemon closed the connection without replying")
        data += chunk
        if len(data) > MAX_LINE:
            raise Refused("bad_reply", "the daemon's reply is longer than 64 KiB")
    return data


def register_once(path, listener, request):
    """Connects, sends `register` with the listener attached, returns (control, slot, group)."""
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        control.settimeout(REPLY_TIMEOUT)
        try:
            control.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(path) from None
        except PermissionError:
            raise Refused(
                "permission_denied",
                f"permission denied on the control socket {path}: run as the daemon's user, "
                f"or start the daemon with --allow-uid {os.geteuid()}",
            ) from None
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        # One sendmsg: the register line with exactly one descriptor attached.
        try:
            sent = socket.send_fds(control, [line], [listener.fileno()])
            control.sendall(line[sent:])
        except OSError as send_error:
            # A daemon that refuses this uid replies and closes before reading: its `forbidden`
            # line explains more than EPIPE does.
            try:
                raw = read_line(control)
            except (OSError, Refused):
                raise send_error from None
        else:
            raw = read_line(control)
        try:
            reply = json.loads(raw)
        except ValueError as e:
            raise Refused("bad_reply", f"unreadable reply from the daemon: {e}") from None
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            reply = reply if isinstance(reply, dict) else {}
            raise Refused(reply.get("code", ""), reply.get("error", "registration refused"))
        if not isinstance(reply.get("slot"), int):
            raise Refused("bad_reply", "register reply without a slot")
    except BaseException:
        control.close()
        raise
    return control, reply["slot"], reply.get("group", "")


class Counters:
    """The worker's own counters map, mapped read-write: native-endian 64-bit words at the byte
    offsets the `counters` reply gives. Each is written whole (one aligned 8-byte store through
    a memoryview of unsigned 64-bit words)."""

    def __init__(self, fd, layout):
        try:
            self.map = mmap.mmap(fd, layout["size"], mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.words = memoryview(self.map).cast("Q")
        self.inflight = layout["inflight"] // 8
        self.accepted = layout["accepted"] // 8
        self.finished = layout["finished"] // 8

    def set_inflight(self, n):
        before = self.words[self.inflight]
        self.words[self.inflight] = n
        if n < before:
            self.words[self.finished] += before - n

    def count_accepted(self):
        self.words[self.accepted] += 1

    def close(self):
        self.words.release()
        self.map.close()


def counters_from_reply(data, fds):
    """The counters map of a `counters` reply line and the descriptors that came with it."""
    try:
        reply = json.loads(data)
    except ValueError:
        reply = {}
    if not isinstance(reply, dict):
        reply = {}
    layout = reply.get("counters")
    if reply.get("ok") is not True or not fds or not isinstance(layout, dict):
        for fd in fds:
            os.close(fd)
        raise Refused(reply.get("code", "bad_reply"), reply.get("error", "no counters map"))
    for fd in fds[1:]:
        os.close(fd)
    return Counters(fds[0], layout)


class Registration:
    """Keeps the listener registered: watched from the serve loop, re-registered after a
    daemon restart."""

    def __init__(self, path, listener, name, weight):
        self.path = path
        self.listener = listener
        self.request = {"op": "register", "pid": os.getpid()}
        if name is not None:
            self.request["name"] = name
        if weight is not None:
            self.request["weight"] = weight
        self.control = None
        self.unsent = b""
        self.slot = None
        self.next_attempt = 0.0
        self.logged_refusal = False
        self.counters = None
        # The daemon did not know the `counters` request: report with `load` lines.
        self.no_counters = False
        self.inflight = 0
        # The `counters` request is sent; its reply (and descriptor) comes in on_readable.
        self.awaiting = None

    def start(self):
        """First attempt: a refusal propagates (the worker exits); no daemon is not an error."""
        try:
            self._registered(*register_once(self.path, self.listener, self.request))
        except NotRunning:
            log(f"daemon not running at {self.path}: will register when it starts")
            self.next_attempt = time.monotonic() + RETRY

    def fileno(self):
        """The control connection to poll, or None while not registered."""
        return self.control.fileno() if self.control is not None else None

    def on_readable(self):
        """The daemon writes nothing unprompted but the reply to `counters`: anything else
        readable means it went away (or is closing the connection after an error line, which
        is shown)."""
        if self.awaiting is not None:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, MAX_LINE, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if data:
                self.awaiting[0] += data
                self.awaiting[1].extend(fds)
                if not data.endswith(b"\n"):
                    return
                line, fds = self.awaiting
                self.awaiting = None
                try:
                    self.counters = counters_from_reply(line, fds)
                    self.counters.set_inflight(self.inflight)
                    return
                except (Refused, OSError, ValueError) as e:
                    log(f"no counters map ({e}): reporting with load lines")
                    # An older daemon refuses the request and closes the connection.
                    self.no_counters = getattr(e, "code", "") == "bad_request"
                    return
            for fd in fds:
                os.close(fd)
        try:
            data = self.control.recv(MAX_LINE)
        except OSError:
            data = b""
        if data:
            log(f"daemon said: {data.decode(errors='replace').strip()}")
        self._lost()

    def tick(self):
        """While not registered, tries again when due."""
        if self.control is not None or time.monotonic() < self.next_attempt:
            return
        try:
            self._registered(*register_once(self.path, self.listener, self.request))
        except NotRunning:
            self.next_attempt = time.monotonic() + RETRY
        except (Refused, OSError) as e:
            if not self.logged_refusal:
                log(f"registering with {self.path}: {e}; retrying every {REFUSED_RETRY:g} s")
                self.logged_refusal = True
            self.next_attempt = time.monotonic() + REFUSED_RETRY

    def accepted(self):
        if self.counters is not None:
            self.counters.count_accepted()

    def report(self, inflight):
        """Into the counters map when the worker has one (a store, no system call); else a
        `load` line: no reply comes. Never waits: serving comes first, so when the daemon is
        slow to read (its socket buffer full) the report is dropped; the next one carries the
        current figure. A line already begun is finished first, so lines stay whole. A failed
        write means the daemon is gone."""
        self.inflight = inflight
        if self.counters is not None:
            self.counters.set_inflight(inflight)
            return
        if self.control is None:
            return
        data = self.unsent + b'{"op":"load","inflight":%d}\n' % inflight
        try:
            sent = self.control.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        if sent > 0:
            self.unsent = data[sent:]

    def close(self):
        """Closing the control connection unregisters at once."""
        if self.control is not None:
            self.control.close()
            self.control = None

    def _registered(self, control, slot, group):
        # From now on the connection is only written by report(), which must never block, and
        # read when poll says it is readable.
        control.setblocking(False)
        self.control = control
        self.unsent = b""
        self.slot = slot
        self.logged_refusal = False
        log(f"registered with {self.path} in slot {slot} of {group}")
        if not self.no_counters:
            # Its reply comes in on_readable; `load` lines until then.
            request = {"op": "counters", "slot": slot}
            self.unsent = json.dumps(request, separators=(",", ":")).encode() + b"\n"
            self.awaiting = [b"", []]
            self.report(self.inflight)

    def _lost(self):
        log("lost the daemon; registering again when it is back")
        self.awaiting = None
        if self.counters is not None:
            self.counters.close()
            self.counters = None
        self.control.close()
        self.control = None
        self.slot = None
        self.next_attempt = time.monotonic() + RETRY


# ---------------------------------------------------------------------------------------------
# HTTP


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""


def parse_head(head):
    """-> (method, path, keep_alive). HTTP/1.1 keeps alive unless `Connection: close`."""
    lines = head.decode("utf-8", errors="replace").split("\r\n")
    first = lines[0].split(" ")
    method = first[0]
    path = first[1] if len(first) > 1 else ""
    keep_alive = not (len(first) > 2 and first[2] == "HTTP/1.0")
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "connection":
            value = value.strip().lower()
            if value == "close":
                keep_alive = False
            elif value == "keep-alive":
                keep_alive = True
    return method, path, keep_alive


def route(target):
    """ms to sleep for the paths served (`/`, `/sleep?ms=N`), None for the others."""
    path, _, query = target.partition("?")
    if path == "/":
        return 0
    if path == "/sleep":
        for kv in query.split("&"):
            if kv.startswith("ms="):
                v = kv[3:]
                ms = int(v) if re.fullmatch(r"\+?[0-9]+", v) else 0
                return min(ms if ms <= U64_MAX else 0, MAX_SLEEP_MS)
        return 0
    return None


def answer(sock, method, target, keep_alive):
    sleep_ms = route(target)
    if method == "GET" and sleep_ms is not None:
        if sleep_ms > 0:
            time.sleep(sleep_ms / 1000)  # blocks the whole worker, on purpose
        status, body = "200 OK", f"pid={os.getpid()}\n"
    elif method == "GET":
        status, body = "404 Not Found", "not found\n"
    else:
        status, body = "405 Method Not Allowed", "only GET\n"
    body = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)


def read_and_answer(conn, registration):
    """Reads what is there and answers every complete request. False: close the connection."""
    try:
        data = conn.sock.recv(4096)
    except OSError:
        return False
    if not data:
        return False
    conn.buf += data
    while True:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            break
        head, conn.buf = conn.buf[: end + 4], conn.buf[end + 4 :]
        method, target, keep_alive = parse_head(head)
        if registration:
            registration.report(1)
        try:
            answer(conn.sock, method, target, keep_alive)
            ok = True
        except OSError:
            ok = False
        if registration:
            registration.report(0)
        if not (ok and keep_alive):
            return False
    return len(conn.buf) < MAX_HEAD


# ---------------------------------------------------------------------------------------------
# The serve loop


class ListenerShutDown(Exception):
    """accept() failed with EINVAL: the listener no longer listens. The daemon shut it down
    (stuck worker evicted, or `reuseport drain --close`); its queued connections moved to the
    other workers."""


def listens_again(listener):
    """After an accept() EINVAL: whether the daemon made the listener listen again (it does so
    right after shutting it down), checked for a few milliseconds."""
    for _ in range(RELISTEN_CHECKS):
        if listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return True
        time.sleep(0.001)
    return False


def serve(listener, registration, conns):
    """Serves until the listener is shut down (raises ListenerShutDown). `conns` (fd -> Conn)
    outlives the listener: accepted connections are served to their end."""
    accepted = False
    while True:
        accepted = serve_round(listener, registration, conns, accepted)


def serve_round(listener, registration, conns, accepted):
    """One poll of the listener, the connections and the control connection, then at most one
    accept(). Returns whether a connection was accepted."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    for fd in conns:
        poller.register(fd, select.POLLIN)
    control_fd = registration.fileno() if registration else None
    if control_fd is not None:
        poller.register(control_fd, select.POLLIN)
    # No wait after an accept: more may be queued.
    events = dict(poller.poll(0 if accepted else TICK * 1000))

    if control_fd is not None and control_fd in events:
        registration.on_readable()
    if registration:
        registration.tick()

    # On every round, not only on readiness (migrated connections raise none), and one
    # connection only: the others stay queued in the kernel, where the daemon can still move
    # them to another worker if this one blocks in a request.
    accepted = False
    try:
        sock, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as e:
        if e.errno == errno.EINVAL and not listens_again(listener):
            raise ListenerShutDown() from None
        if e.errno not in (errno.ECONNABORTED, errno.EPROTO):
            log(f"accept: {e}")
    else:
        accepted = True
        if registration:
            registration.accepted()
        sock.settimeout(5.0)  # a client that stops reading fails the write after 5 s
        conns[sock.fileno()] = Conn(sock)

    for fd, conn in list(conns.items()):
        if fd in events and not read_and_answer(conn, registration):
            del conns[fd]
            conn.sock.close()
    return accepted


def main(argv):
    args = parse_args(argv)
    family, sockaddr = args.listen
    shown = f"[{sockaddr[0]}]:{sockaddr[1]}" if family == socket.AF_INET6 else "%s:%d" % sockaddr
    conns = {}  # fd -> Conn, kept across listeners
    first = True
    try:
        while True:
            try:
                listener = bind_listener(family, sockaddr, args.v6only)
            except OSError as e:
                print(f"error: binding {shown}: {e}", file=sys.stderr)
                return 1
            registration = None
            if not args.no_register:
                registration = Registration(args.control, listener, args.name, args.weight)
                if first:
                    try:
                        registration.start()
                    except Refused as e:
                        print(f"error: {e.message}", file=sys.stderr)
                        if e.code:
                            print(f"(code {e.code}; see docs/protocol.md)", file=sys.stderr)
                        listener.close()
                        return 1
                    except OSError as e:
                        print(f"error: control socket {args.control}: {e}", file=sys.stderr)
                        listener.close()
                        return 1
                else:
                    # Joining again: a refusal or a missing daemon is retried, not fatal.
                    registration.tick()
            if first:
                log(f"echo worker pid {os.getpid()} on {shown}")
            first = False
            try:
                serve(listener, registration, conns)
            except ListenerShutDown:
                log("the listener was shut down (evicted or closed by the daemon): joining again")
            finally:
                # The old registration goes with its listener; the new one is made on a new
                # control connection.
                if registration:
                    registration.close()
                listener.close()
    except KeyboardInterrupt:
        return 130
    finally:
        for conn in conns.values():
            conn.sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
