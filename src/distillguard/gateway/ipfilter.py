"""IP allow/deny rules and the real client address behind trusted proxies.

``X-Forwarded-For`` is a list that anyone can start: a client can send ``X-Forwarded-For: 10.0.0.1`` itself.
Only entries appended by proxies we operate are trustworthy, so the header is read only when the TCP peer
is a trusted proxy, and then right to left: each trusted hop vouches for the address to its left, and the
first address that is not a trusted proxy is the client. A spoofed prefix sits further left and is never
reached. Every header line counts (a proxy may append a line of its own rather than extend the client's),
joined in order. A hop that is not an address fails closed: the client is then :data:`UNPARSEABLE`, which
no allow rule admits. Deny rules win over allow rules; an empty allow list admits every address not denied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from distillguard.errors import UserError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNPARSEABLE = "unparseable-forwarded-for"


def _networks(kind: str, cidrs: Sequence[str] | str) -> tuple[IPNetwork, ...]:
    if isinstance(cidrs, str):  # a single CIDR, or a comma-separated list from an env variable
        cidrs = [c for c in cidrs.split(",") if c.strip()]
    out = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise UserError(f"invalid CIDR in {kind}: {c!r}") from None
    return tuple(out)


def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer string or a forwarded hop (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80``,
    ``::ffff:1.2.3.4``), IPv4-mapped IPv6 folded to IPv4; ``None`` if it is not an address."""
    s = text.strip().strip('"')
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        s = s[1:end]
    elif s.count(":") == 1:  # IPv4 with a port
        s = s.split(":", 1)[0]
    s = s.split("%", 1)[0]  # IPv6 zone id
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class IPRules:
    """CIDR allow/deny lists (IPv4 and IPv6) and the trusted-proxy rule for ``X-Forwarded-For``."""

    def __init__(
        self, allow: Sequence[str] = (), deny: Sequence[str] = (), trusted_proxies: Sequence[str] = ()
    ) -> None:
        self.allow = _networks("allow", allow)
        self.deny = _networks("deny", deny)
        self.trusted_proxies = _networks("trusted_proxies", trusted_proxies)

    @staticmethod
    def _in(ip: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
        return any(ip.version == n.version and ip in n for n in nets)

    def is_trusted(self, ip: str) -> bool:
        addr = parse_ip(ip)
        return addr is not None and self._in(addr, self.trusted_proxies)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the peer itself unless it is a trusted proxy, else the rightmost
        ``X-Forwarded-For`` hop that is not a trusted proxy (or the leftmost hop if all are trusted).
        A malformed hop is treated as an untrusted client that has no address: :data:`UNPARSEABLE`."""
        addr = parse_ip(peer)
        if addr is None:
            return peer
        if not forwarded_for or not self._in(addr, self.trusted_proxies):
            return str(addr)
        current = addr
        for hop in reversed(forwarded_for.split(",")):
            if not hop.strip():
                continue
            hop_addr = parse_ip(hop)
            if hop_addr is None:
                return UNPARSEABLE
            current = hop_addr
            if not self._in(hop_addr, self.trusted_proxies):
                return str(hop_addr)
        return str(current)

    def allowed(self, ip: str) -> bool:
        """Deny wins; an empty allow list allows everything else. An address that does not parse (a unix
        socket peer, a test client) is refused as soon as any rule exists, since no rule can vouch for it."""
        addr = parse_ip(ip)
        if addr is None:
            return not self.allow and not self.deny
        if self._in(addr, self.deny):
            return False
        return not self.allow or self._in(addr, self.allow)
