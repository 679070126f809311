"""Mirror credentials: load them from a file or the environment, and keep the password out of every text.

The password is needed in exactly one place (the HTTP Authorization header); everything that may be
printed, logged or stored goes through `redact` first.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from howto_prep.errors import UserError

logger = logging.getLogger(__name__)

USER_VARIABLE = "HOWTO100M_USER"
PASSWORD_VARIABLE = "HOWTO100M_PASSWORD"
REDACTED = "***"


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials; `repr` never shows the password (Ray, tracebacks and logs print reprs)."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={REDACTED!r})"

    def basic_token(self) -> str:
        """The base64 part of the `Authorization: Basic ...` header."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")

    def authorization_header(self) -> str:
        return f"Basic {self.basic_token()}"

    def secrets(self) -> list[str]:
        """Every form in which the password could leak into a text."""
        forms = [f"{self.username}:{self.password}", self.basic_token(), self.password]
        return [form for form in forms if form]


def redact(text: str, credentials: Credentials | None) -> str:
    """`text` with every form of the password replaced by ***."""
    if credentials is None or not text:
        return text
    for secret in credentials.secrets():
        text = text.replace(secret, REDACTED)
    return text


def parse_credentials_line(line: str, origin: str) -> Credentials:
    """'username:password' (the password may itself contain ':') -> Credentials."""
    line = line.strip()
    username, sep, password = line.partition(":")
    if not sep or not username or not password:
        raise UserError(f"{origin} must hold one line 'username:password'")
    return Credentials(username, password)


def warn_if_shared(path: Path) -> None:
    """Warn (stderr) when group or others may read the credentials file."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("warning: %s is readable by other users; run: chmod 600 %s", path, path)


def load_credentials(path: Path | None, environ: dict[str, str] | None = None, warn: bool = True) -> Credentials | None:
    """Credentials from `path` (one line 'username:password'), else from HOWTO100M_USER/PASSWORD, else None."""
    env = os.environ if environ is None else environ
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read the credentials file {path} ({err.__class__.__name__})") from None
        if warn:
            warn_if_shared(path)
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise UserError(f"credentials file {path} must hold exactly one line 'username:password'")
        return parse_credentials_line(lines[0], f"credentials file {path}")
    user, password = env.get(USER_VARIABLE), env.get(PASSWORD_VARIABLE)
    if user and password:
        return Credentials(user, password)
    if user or password:
        raise UserError(f"set both {USER_VARIABLE} and {PASSWORD_VARIABLE}, or pass --credentials FILE")
    return None


@dataclass(frozen=True)
class CredentialSource:
    """Where a worker reads the credentials itself: a file path, or (path None) HOWTO100M_USER and
    HOWTO100M_PASSWORD in its own environment. It holds no secret, so it may travel as a Ray task
    argument (task arguments are pickled into the object store and, on a cluster without TLS, sent
    between nodes in clear); on a cluster the file (or the variables) must exist on every node."""

    path: str | None = None

    def load(self) -> Credentials | None:
        return _load_cached(self.path)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str | None) -> Credentials | None:
    """One read per worker process, not one per video."""
    return load_credentials(Path(path) if path else None, warn=False)


def credential_source(path: Path | None, environ: dict[str, str] | None = None) -> CredentialSource | None:
    """The source matching `load_credentials(path)`: the file, else the environment, else None."""
    env = os.environ if environ is None else environ
    if path is not None:
        return CredentialSource(str(Path(path).resolve()))
    return CredentialSource() if env.get(USER_VARIABLE) and env.get(PASSWORD_VARIABLE) else None
