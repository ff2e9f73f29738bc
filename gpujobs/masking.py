"""The one masking function for everything shown outside: the API, ``/ui`` and webhook bodies.

``gpujobs.resources`` applies it when it serializes a row, so every surface gets the same mask. What is
masked: values under names that look secret (``is_secret_name``, at any depth, and ``{"key": "HF_TOKEN",
"value": ...}`` pairs such as Novita's environment lists), the userinfo of URLs, and every query value
and fragment of URLs, also inside free text such as error messages (``call.api`` URLs carry tokens in
their query strings). Names and paths stay readable, so a masked value still says what it was.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlsplit, urlunsplit

MASK = "••••"
# Names that look secret, matched anywhere in the name, any case: cookie, authorization (auth), *token*,
# *secret*, *password* (pass, passwd), credentials, private keys, api keys, signatures.
_SECRET_WORDS = re.compile(
    r"pass(word|wd)?|secret|token|auth|credential|private|cookie|signature|api[_-]?key", re.IGNORECASE
)
# ``*_key`` names: OPENAI_KEY, x-access-key, accessKey; but not a plain ``key`` (an object key, a sort key).
_KEY_SUFFIX = re.compile(r"[_-][kK][eE][yY]$|[a-z0-9]Key$")
# Objects of request headers (a job's ``webhookHeaders``, ``webhook.send``'s and ``call.api``'s ``headers``):
# every value is masked, since a header carries a token under any name.
HEADER_OBJECTS = frozenset({"headers", "webhookHeaders"})
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def is_secret_name(name: object) -> bool:
    """True for a header, param or environment variable name whose value must not be shown."""
    return isinstance(name, str) and _secret_str(name)


@functools.lru_cache(maxsize=4096)  # the same few names, in every body masked or sealed
def _secret_str(name: str) -> bool:
    return bool(_SECRET_WORDS.search(name) or _KEY_SUFFIX.search(name))


def mask_headers(headers: dict[str, Any] | None) -> dict[str, str] | None:
    """Header names with every value masked."""
    return None if headers is None else dict.fromkeys(headers, MASK)


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` (JSON-like) with secret-named entries, header values and URL credentials and
    queries masked."""
    return replace_secrets(value, _mask, mask_text)


def _mask(value: Any) -> str | None:
    return MASK if value is not None else None  # nothing sent reads as nothing, not as a hidden value


def replace_secrets(value: Any, hide: Callable[[Any], Any], text: Callable[[str], Any] = str) -> Any:
    """A copy of ``value`` (JSON-like) with ``hide`` applied to each secret in it: the value of a
    secret-named entry (at any depth), of a ``{"key": "HF_TOKEN", "value": ...}`` pair, and of each
    header of a header object; ``text`` to every other string. The masking rules, applied by the
    masks shown outside and by the sealing of what is stored (``gpujobs.sealing``)."""
    if isinstance(value, dict):
        named = value.get("key", value.get("name"))
        if "value" in value and is_secret_name(named):  # {"key": "API_TOKEN", "value": "..."}
            return {k: hide(v) if k == "value" else replace_secrets(v, hide, text) for k, v in value.items()}
        return {k: _replaced_entry(k, v, hide, text) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_secrets(item, hide, text) for item in value]
    if isinstance(value, str):
        return text(value)
    return value


def _replaced_entry(name: str, value: Any, hide: Callable[[Any], Any], text: Callable[[str], Any]) -> Any:
    if is_secret_name(name):
        return hide(value)
    if name in HEADER_OBJECTS and isinstance(value, dict):
        return replace_headers(value, hide)
    return replace_secrets(value, hide, text)


def replace_headers(headers: dict[str, Any], hide: Callable[[Any], Any]) -> dict[str, Any]:
    """A header object with ``hide`` applied to every value: a header carries a token under any name."""
    return {name: hide(value) for name, value in headers.items()}


def mask_text(text: str | None) -> str | None:
    """``text`` (an error message, a log line) with every URL in it masked by ``mask_url``."""
    if not text or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group()) or "", text)


def mask_url(url: str | None) -> str | None:
    """The URL with its userinfo, each query value and its fragment masked; unchanged when it has none."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # not parseable, so not provably harmless
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url
    netloc = parts.netloc if "@" not in parts.netloc else f"{MASK}@{parts.netloc.rsplit('@', 1)[1]}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{quote_plus(name)}={MASK}" for name, _ in pairs) if pairs else parts.query and MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query, MASK if parts.fragment else ""))
