"""A lossy, jittery link to a livekit-server of its own, inside network namespaces this script creates.

Topology (everything stays inside this machine; no address outside the namespaces is ever used)::

    test namespace (where the test process runs)        lkbn-<id> namespace (created here)
    ┌───────────────────────────────┐  veth pair   ┌──────────────────────────────────┐
    │ bridge, callers   10.213.N.1  ├──────────────┤ 10.213.N.2   livekit-server       │
    └───────────────────────────────┘  impairment  └──────────────────────────────────┘
                                        on both ends' egress

The server advertises only 10.213.N.2, so every media packet between a client and the server crosses the
veth: client → server leaves by the test side's end, server → client by the server side's; both ends get the
same impairment. A caller's voice reaches the bridge over two impaired hops (caller → server → bridge).
10.213.N.0/30 exists only on this veth pair; neither namespace has a default route, so nothing can leave.

Impairment, by what the kernel offers:

- ``netem`` (``CONFIG_NET_SCH_NETEM``): ``loss X% delay D jitter J`` on each end, the textbook way.
- Without netem (this project's CI kernel has none): an HTB root with three classes and two classic-BPF
  filters that draw a random number per packet (``ld rand``, ``SKF_AD_RANDOM``) and match IPv4 UDP only
  (media; signalling TCP is left alone):
  * ``loss_pct`` of UDP packets go to a class whose queue holds 0 packets: dropped, counted by tc;
  * ``jitter_pct`` of the rest go to a class limited to ``jitter_kbit``: each waits behind the others in
    that queue, so it arrives later than its neighbours (0 to tens of ms, and reordered). That is delay
    *variation*, not netem's constant base delay plus a distribution; ``describe()`` says which ran.

Needs root and iproute2, and refuses to run in the initial network namespace (it would add an interface to
the host): run it inside ``scripts/netns.sh exec`` like the tests. Command line::

    python -m scripts.netem check                  # which method this kernel supports
    python -m scripts.netem up --loss 5 --jitter 20 # create the link and print the server address
    python -m scripts.netem down --id ID            # remove a link left behind
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from scripts.livekit_server import LiveKitServer, ensure_binary
from scripts.ports import free_tcp_port

__all__ = ["ImpairedLink", "NamespacedLiveKitServer", "Unavailable", "netem_available", "why_unavailable"]

SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: "A = a random u32" in classic BPF


class Unavailable(RuntimeError):
    """This machine cannot build the link (not root, no iproute2, initial namespace)."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def in_private_namespace() -> bool:
    """True inside a named namespace (``ip netns identify`` knows it), as under ``scripts/netns.sh exec``.
    The host's own namespace has no name; /proc/1/ns/net is often unreadable in containers."""
    try:
        return bool(_run("ip", "netns", "identify", str(os.getpid()), check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    if not in_private_namespace():
        return "refuses to touch the initial network namespace: run inside scripts/netns.sh exec"
    return None


def netem_available() -> bool:
    """Try a netem qdisc on a throwaway namespace's loopback."""
    name = f"lkbn-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                    "delay", "1ms", check=False).returncode == 0
    finally:
        _run("ip", "netns", "del", name, check=False)


def _remove_stale_links() -> None:
    """Namespaces left by a run that was killed (a numeric id is the creating process's pid; the command
    line's named links are left alone): deleting one also deletes its veth pair, the test side's end too."""
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        ident = name.removeprefix("lkbn-")
        if name.startswith("lkbn-") and ident.isdigit() and not os.path.exists(f"/proc/{ident}"):
            _run("ip", "netns", "del", name, check=False)


def _udp_random_filter(threshold: int) -> str:
    """Classic BPF for cls_bpf: match (return -1) IPv4 UDP packets when a random u32 < threshold."""
    program = [
        (0x28, 0, 0, 12),             # ldh [12]          ethertype
        (0x15, 0, 5, 0x0800),         # jeq #IPv4 ? next : pass
        (0x30, 0, 0, 23),             # ldb [23]          IPv4 protocol
        (0x15, 0, 3, 17),             # jeq #UDP ? next : pass
        (0x20, 0, 0, SKF_AD_RANDOM),  # ld rand
        (0x35, 1, 0, threshold),      # jge #threshold ? pass : match
        (0x06, 0, 0, 0xFFFFFFFF),     # match: ret -1 (the filter's classid)
        (0x06, 0, 0, 0),              # pass:  ret 0 (next filter / default class)
    ]
    return f"{len(program)}," + ",".join(" ".join(str(x) for x in insn) for insn in program)


def _threshold(pct: float) -> int:
    return max(0, min(0xFFFFFFFF, round(pct / 100 * 2**32)))


@dataclass
class ImpairedLink:
    """``with ImpairedLink(loss_pct=5, jitter_pct=20) as link:`` then start ``link.server()``."""

    loss_pct: float = 5.0
    delay_ms: float = 20.0  # netem only
    jitter_ms: float = 10.0  # netem only
    jitter_pct: float = 20.0  # fallback only: share of UDP packets sent through the slow side queue
    jitter_kbit: int = 64  # fallback only: rate of that queue
    link_id: str = field(default_factory=lambda: str(os.getpid()))
    method: str = ""

    def __post_init__(self) -> None:
        octet = zlib.crc32(self.link_id.encode()) % 250 + 1
        self.namespace = f"lkbn-{self.link_id}"
        self.local_if, self.remote_if = f"lkbn{self.link_id}t", f"lkbn{self.link_id}s"
        self.local_ip, self.remote_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"

    # -- lifecycle
    def up(self) -> ImpairedLink:
        reason = why_unavailable()
        if reason is not None:
            raise Unavailable(reason)
        self.down()
        _remove_stale_links()
        self.method = "netem" if netem_available() else "htb+bpf"
        ns = self.namespace
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", self.local_if, "type", "veth", "peer", "name", self.remote_if, "netns", ns)
        _run("ip", "addr", "add", f"{self.local_ip}/30", "dev", self.local_if)
        _run("ip", "-n", ns, "addr", "add", f"{self.remote_ip}/30", "dev", self.remote_if)
        _run("ip", "link", "set", self.local_if, "up")
        _run("ip", "-n", ns, "link", "set", self.remote_if, "up")
        for prefix, dev in (((), self.local_if), (("ip", "netns", "exec", ns), self.remote_if)):
            for cmd in self._qdisc(dev):
                _run(*prefix, *cmd)
        return self

    def down(self) -> None:
        _run("ip", "link", "del", self.local_if, check=False)  # removes both ends
        _run("ip", "netns", "del", self.namespace, check=False)

    def __enter__(self) -> ImpairedLink:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def _qdisc(self, dev: str) -> list[list[str]]:
        if self.method == "netem":
            return [["tc", "qdisc", "add", "dev", dev, "root", "netem", "loss", f"{self.loss_pct}%",
                     "delay", f"{self.delay_ms}ms", f"{self.jitter_ms}ms"]]
        tc = ["tc"]
        return [
            [*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10", "r2q", "1000"],
            [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "1gbit"],
            [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "1gbit"],
            [*tc, "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "0"],
            [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:30", "htb", "rate",
             f"{self.jitter_kbit}kbit", "ceil", f"{self.jitter_kbit}kbit", "burst", "1600", "cburst", "1600"],
            [*tc, "qdisc", "add", "dev", dev, "parent", "1:30", "handle", "30:", "pfifo", "limit", "100"],
            [*tc, "filter", "add", "dev", dev, "parent", "1:", "prio", "1", "bpf", "bytecode",
             _udp_random_filter(_threshold(self.loss_pct)), "classid", "1:20"],
            [*tc, "filter", "add", "dev", dev, "parent", "1:", "prio", "2", "bpf", "bytecode",
             _udp_random_filter(_threshold(self.jitter_pct)), "classid", "1:30"],
        ]

    # -- what happened
    def describe(self) -> str:
        if self.method == "netem":
            return (f"netem on both ends: loss {self.loss_pct:g}%, delay {self.delay_ms:g} ms "
                    f"± {self.jitter_ms:g} ms")
        return (f"no netem in this kernel; tc htb + classic-BPF random filters on both ends: {self.loss_pct:g}% "
                f"of UDP packets dropped, {self.jitter_pct:g}% sent through a {self.jitter_kbit} kbit/s side "
                "queue (delayed and reordered)")

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets sent/dropped per class on each end (``tc -s``); the proof that the link was impaired."""
        out: dict[str, dict[str, int]] = {}
        for side, prefix, dev in (("client_to_server", (), self.local_if),
                                  ("server_to_client", ("ip", "netns", "exec", self.namespace), self.remote_if)):
            text = _run(*prefix, "tc", "-s", "class" if self.method != "netem" else "qdisc", "show", "dev", dev,
                        check=False).stdout
            out[side] = _parse_tc(text, self.method)
        return out

    def server(self, *, api_key: str, api_secret: str, log_dir: Path | None = None) -> NamespacedLiveKitServer:
        return NamespacedLiveKitServer(self, api_key=api_key, api_secret=api_secret, log_dir=log_dir)


def _parse_tc(text: str, method: str) -> dict[str, int]:
    """``{"sent": n, "dropped": n, "delayed": n}`` from ``tc -s`` output."""
    stats = {"sent": 0, "dropped": 0, "delayed": 0}
    current = ""
    for line in text.splitlines():
        words = line.split()
        if words[:1] in (["class"], ["qdisc"]):
            current = words[2] if len(words) > 2 else ""
        elif words[:1] == ["Sent"] and "pkt" in words:
            packets = int(words[words.index("pkt") - 1])
            dropped = int(line.split("dropped ")[1].split(",")[0]) if "dropped " in line else 0
            if method == "netem":
                stats["sent"] += packets
                stats["dropped"] += dropped
            elif current == "1:20":
                stats["dropped"] += dropped
            elif current == "1:30":
                stats["delayed"] += packets
                stats["sent"] += packets
            elif current == "1:10":
                stats["sent"] += packets
    return stats


class NamespacedLiveKitServer(LiveKitServer):
    """``LiveKitServer`` run inside the link's namespace, bound to and advertising its address only."""

    def __init__(self, link: ImpairedLink, *, api_key: str, api_secret: str, log_dir: Path | None = None) -> None:
        super().__init__(api_key=api_key, api_secret=api_secret, log_dir=log_dir)
        self.link = link

    @property
    def url(self) -> str:
        return f"ws://{self.link.remote_ip}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.link.remote_ip}:{self.port}"

    def _config(self, port: int, tcp_port: int, udp_start: int) -> str:
        ip = self.link.remote_ip
        return "\n".join([
            f"port: {port}", "rtc:", f"  tcp_port: {tcp_port}", f"  port_range_start: {udp_start}",
            f"  port_range_end: {udp_start + self._udp_ports - 1}", f"  node_ip: {ip}", "  use_external_ip: false",
            "  ips:", f"    includes: [{ip}/32]", "keys:", f"  {self.api_key}: {self.api_secret}",
            "logging:", "  level: info", "",
        ])

    def start(self, timeout: float = 20.0) -> NamespacedLiveKitServer:
        binary = ensure_binary(self.version)
        # The namespace is empty: any port is free there.
        self.port = self._port or free_tcp_port()
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="livekit-server-netem-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"livekit-server-netem-{self.port}.log"
        config = self._config(self.port, self.port + 1, 30000)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.link.namespace, str(binary), "--dev", "--bind", self.link.remote_ip,
                 "--config-body", config],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout)
        return self


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.netem", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="say whether the link can be built and with which method")
    up = sub.add_parser("up", help="create the link (until `down`)")
    up.add_argument("--loss", type=float, default=5.0)
    up.add_argument("--jitter", type=float, default=20.0, help="fallback: %% of packets through the slow queue")
    up.add_argument("--id", default="cli", help="names the link (letters/digits, up to 7); digits = a pid")
    down = sub.add_parser("down", help="remove a link")
    down.add_argument("--id", required=True)
    args = parser.parse_args(argv)
    reason = why_unavailable()
    if args.command == "check":
        print(reason or f"available; method: {'netem' if netem_available() else 'htb+bpf (no netem)'}")
        return 1 if reason else 0
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if args.command == "down":
        ImpairedLink(link_id=args.id).down()
        return 0
    link = ImpairedLink(loss_pct=args.loss, jitter_pct=args.jitter, link_id=args.id).up()
    print(f"{link.describe()}\nnamespace {link.namespace}, server address {link.remote_ip}; "
          f"remove with: python -m scripts.netem down --id {link.link_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
