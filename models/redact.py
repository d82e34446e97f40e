"""Take secrets out of text the pack passes on (route answers, websocket events, cli.py output, logs).

A Hub mirror can echo the request's ``Authorization`` header in an error message, a reason phrase or a request
id, and huggingface_hub puts those into its exceptions. Everything the pack passes on from the Hub library goes
through :func:`redact` first. Stand-alone (standard library only): cli.py loads it by path.
"""
from __future__ import annotations

import os
import re

MASK = "***"
_PATTERNS = (
    (re.compile(r"\bhf_[A-Za-z0-9]{10,}"), "hf_" + MASK),  # token values (not names such as hf_hub_download)
    (re.compile(r"(?i)\b(bearer)(\s+|%20)[^\s'\",;)}\]]+"), r"\1 " + MASK),
    (re.compile(r"(?i)(authorization|x-api-key|cookie)([\"']?\s*[:=]\s*[\"']?)[^\r\n'\",}]+"), r"\1\2" + MASK),
    (re.compile(r"(?i)([?&;](?:token|access_token|api_key|hf_token)=)[^&\s'\"]+"), r"\1" + MASK),
)


def known_tokens(extra: str | None = None) -> list[str]:
    """The token values this process may send: given, from the environment, or stored by ``hf auth login``."""
    found = [extra, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        found.append(get_token())
    except Exception:  # no library, an unreadable token file: the patterns still apply
        pass
    return sorted({t for t in found if t and len(t) >= 4}, key=len, reverse=True)


def redact(text, token: str | None = None) -> str:
    """``text`` with token values, ``Bearer ...`` and ``Authorization: ...`` echoes masked."""
    text = str(text)
    for t in known_tokens(token):
        text = text.replace(t, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter:
    """A logging filter that masks secrets in the records of the HTTP and Hub libraries (httpx logs each
    request's status line, reason phrase included, at INFO; ComfyUI shows INFO)."""

    def filter(self, record) -> bool:
        if isinstance(record.msg, str) and not record.args:
            record.msg = _mask(record.msg)
        else:
            try:
                record.msg, record.args = _mask(record.getMessage()), None
            except Exception:  # a record that cannot be formatted is left to the handler's own error
                pass
        return True


# the loggers of the libraries that talk to a Hub mirror (huggingface_hub's own children included)
LIBRARY_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "requests", "huggingface_hub", "hf_xet")


def protect_loggers() -> None:
    """Put a RedactingFilter on the loggers of the libraries a download goes through (once each)."""
    import logging

    names = set(LIBRARY_LOGGERS) | {n for n in logging.Logger.manager.loggerDict
                                    if n.split(".")[0] in LIBRARY_LOGGERS}
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def _mask(text: str) -> str:
    """redact() without reading the stored token file (a log record must stay cheap): the environment's tokens
    and the patterns (which match every real Hugging Face token)."""
    for t in (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        if t and len(t) >= 4:
            text = text.replace(t, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
