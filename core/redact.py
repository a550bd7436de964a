"""Keep secrets out of logs, errors and metrics.

Secrets this project handles: the ElevenLabs API key, signed conversation URLs (their query string carries
the signature), the LiveKit API secret and access tokens (JWTs). Two tools:

- :func:`redact_url` drops every query value of a URL, so ``wss://host/path?agent_id=a&token=s3cret`` reads
  ``wss://host/path?agent_id=…&token=…``. URLs are opaque to us (the signature parameter's name is not
  documented), so every value goes.
- :class:`Redactor` replaces registered secret strings, and anything shaped like a JWT, wherever they occur.
  Each secret is also masked in its percent-encoded forms (``quote`` and ``quote_plus``): a signature with
  ``+ / =`` in it appears encoded in a request line (websockets logs ``GET /path?…`` at DEBUG, without a
  scheme for the URL rule to catch), decoded where we registered it from ``parse_qsl``.
  :meth:`Redactor.install` attaches it as a logging filter to handlers, so a record is scrubbed after
  ``%``-formatting, when its arguments have been merged in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import SplitResult, quote, quote_plus, unquote_plus, urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "redact_url"]

MASK = "…"
# header.payload.signature, each base64url; LiveKit access tokens and most bearer tokens look like this.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
_URL_QUERY = re.compile(r"(?P<scheme>wss?|https?)://(?P<rest>[^\s\"'<>]+)")
# Shorter strings would mask ordinary words; real keys are far longer than this.
_MIN_SECRET_LEN = 6


def redact_url(url: str) -> str:
    """The URL with every query value and any userinfo replaced by ``…``; the path stays readable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(f"{pair.split('=', 1)[0]}={MASK}" if "=" in pair else pair
                     for pair in parts.query.split("&") if pair)
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))


class Redactor(logging.Filter):
    """Masks known secrets, JWT-shaped tokens and URL query values in any text or log record."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET_LEN:
                # The value as given, decoded (it may have been registered in its encoded form), and encoded
                # both ways; lower-case hex escapes too, since encoders differ on the case.
                for base in {secret, unquote_plus(secret)}:
                    for form in (base, quote(base, safe=""), quote_plus(base, safe=""), quote(base, safe="/"),
                                 quote_plus(base, safe="/")):
                        if len(form) >= _MIN_SECRET_LEN:
                            self._secrets.add(form)
                            self._secrets.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), form))

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        text = _JWT.sub(MASK, text)
        return _URL_QUERY.sub(lambda m: redact_url(m.group(0)), text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters render exc_info later; cache a scrubbed rendering so they use it instead.
            record.exc_text = self(logging.Formatter().formatException(record.exc_info))
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True

    def install(self, *handlers: logging.Handler) -> None:
        """Attach to these handlers, or to every handler of the root logger when none are given."""
        for handler in handlers or tuple(logging.getLogger().handlers):
            handler.addFilter(self)
