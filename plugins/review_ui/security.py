"""Security parts of the review page: its options, the session key, the same-origin check
and the sign-in rate limiter.

The rate limiter lives in memory, per process: run one page process per store (or put the
replicas behind sticky routing), and a restart forgets the failures counted so far.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from infgate.errors import ConfigError

__all__ = ["LoginLimiter", "UIOptions", "same_origin", "session_key"]

log = logging.getLogger(__name__)
MIN_SECRET_BYTES = 32
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_B64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


@dataclass(frozen=True)
class UIOptions:
    """Options of the review page.

    Attributes:
        secure_cookies: ``True`` always marks the session cookie ``Secure``; ``False`` never;
            ``None`` (default) marks it when the request came over https (behind a TLS
            proxy, run uvicorn with ``--proxy-headers`` so the scheme is seen).
        session_seconds: how long a session lives without signing in again.
        max_user_failures: failed sign-ins per name within ``window_seconds`` before that
            name is refused (even with the right password) until the window passes.
        max_client_failures: failed sign-ins per client address within the window.
        window_seconds: the rate limiter's sliding window.
        allowed_origins: extra ``scheme://host[:port]`` origins allowed to post (the page's
            public address behind a proxy); the request's own host is always allowed.
    """

    secure_cookies: bool | None = None
    session_seconds: int = 12 * 3600
    max_user_failures: int = 5
    max_client_failures: int = 30
    window_seconds: int = 300
    allowed_origins: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.secure_cookies not in (None, True, False):
            raise ConfigError(
                f"secure_cookies must be None, True or False, got {self.secure_cookies!r}"
            )
        for name, low, high in (
            ("session_seconds", 60, 30 * 86_400),
            ("max_user_failures", 1, 1000),
            ("max_client_failures", 1, 100_000),
            ("window_seconds", 1, 86_400),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        for origin in self.allowed_origins:
            parts = urlsplit(origin) if isinstance(origin, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"allowed_origins entry {origin!r} is not scheme://host[:port]")
        object.__setattr__(
            self, "allowed_origins", tuple(o.rstrip("/") for o in self.allowed_origins)
        )


def _decode(secret: str) -> bytes | None:
    text = secret.strip()
    if len(text) % 2 == 0 and _HEX.match(text):
        return bytes.fromhex(text)
    if _B64.match(text):
        padded = text + "=" * (-len(text) % 4)
        try:
            if "-" in text or "_" in text:
                return base64.urlsafe_b64decode(padded)
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def session_key(secret: str | None) -> bytes:
    """The session-signing key: ``INFGATE_UI_SECRET`` decoded, or 32 fresh random bytes.

    The secret must be hex or base64 of at least 32 random bytes (e.g. the output of
    ``python -c "import secrets; print(secrets.token_hex(32))"``); a short, non-encoded or
    visibly non-random value (``x``, 64 zeros) is refused. Without one, sessions end when
    the process restarts.

    Raises:
        ConfigError: a weak secret (the message says how to make a good one).
    """
    if secret is None:
        log.info("INFGATE_UI_SECRET is unset: using a random key (sessions end on restart)")
        return secrets.token_bytes(MIN_SECRET_BYTES)
    raw = _decode(secret) if isinstance(secret, str) else None
    # 32 random bytes hold >= 16 distinct values with overwhelming probability
    if raw is None or len(raw) < MIN_SECRET_BYTES or len(set(raw)) < 16:
        got = "not hex or base64" if raw is None else f"{len(raw)} bytes, {len(set(raw))} distinct"
        raise ConfigError(
            f"INFGATE_UI_SECRET must be hex or base64 of at least {MIN_SECRET_BYTES} random "
            f"bytes ({got}); make one with "
            f'`python -c "import secrets; print(secrets.token_hex(32))"`, or unset it'
        )
    return raw


def same_origin(
    origin: str | None, referer: str | None, host: str, allowed: tuple[str, ...]
) -> bool:
    """True when a state-changing request comes from the page itself.

    ``Origin`` decides when present (``null`` never passes); else ``Referer``'s origin;
    a request with neither (not a browser: curl, an API client) passes this check and still
    needs its CSRF token or bearer token.
    """
    source = origin if origin is not None else referer
    if source is None:
        return True
    parts = urlsplit(source.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.netloc.lower() == host.lower():
        return True
    return f"{parts.scheme}://{parts.netloc}".lower() in {a.lower() for a in allowed}


class LoginLimiter:
    """Failed sign-ins per key (``user:<name>``, ``client:<address>``) in a sliding window.

    In memory, per process (see the module docstring); at most ``max_keys`` keys are kept,
    the stalest dropped first.
    """

    def __init__(self, options: UIOptions, *, max_keys: int = 100_000) -> None:
        self.options = options
        self.max_keys = max_keys
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _limit(self, key: str) -> int:
        o = self.options
        return o.max_user_failures if key.startswith("user:") else o.max_client_failures

    def retry_after(self, keys: list[str]) -> int | None:
        """Seconds until every key may try again, or ``None`` when none is limited."""
        now = time.monotonic()
        window = self.options.window_seconds
        wait = 0.0
        with self._lock:
            for key in keys:
                stamps = self._fails.get(key)
                if not stamps:
                    continue
                while stamps and now - stamps[0] > window:
                    stamps.popleft()
                if len(stamps) >= self._limit(key):
                    wait = max(wait, window - (now - stamps[-self._limit(key)]))
        return max(1, int(wait + 0.999)) if wait > 0 else None

    def failed(self, keys: list[str]) -> None:
        """Count one failed sign-in against every key."""
        now = time.monotonic()
        with self._lock:
            if len(self._fails) >= self.max_keys:
                stalest = sorted(
                    self._fails, key=lambda k: self._fails[k][-1] if self._fails[k] else 0
                )
                for key in stalest[: len(self._fails) - self.max_keys + 1]:
                    del self._fails[key]
            for key in keys:
                self._fails.setdefault(key, deque(maxlen=1000)).append(now)

    def succeeded(self, key: str) -> None:
        """Forget the failures of ``key`` (a name that just signed in)."""
        with self._lock:
            self._fails.pop(key, None)
