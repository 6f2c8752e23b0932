"""Masking secrets before they reach a log line, an MLflow param or tag, a summary or a file.

One function, :func:`mask_url`, hides every password in a URL (or in any
text holding URLs, such as an error message): the password of the userinfo
(``postgresql://user:***@host/db``) and the value of every secret query
parameter (``?sslpassword=***&token=***``). :func:`mask_config` applies it to
every text in a nested configuration and also hides the value of every key
named like a secret (``password``, ``api_token``, ``fs.s3a.secret.key``...).
:func:`mask_config_text` masks a configuration file's own text, keeping its
comments and layout.

Masking is for what segml writes itself; the secret still reaches the
database driver or the tracking client that needs it.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

#: Query parameters whose value is a secret, compared case-insensitively.
SECRET_PARAMETERS: tuple[str, ...] = ("password", "sslpassword", "passwd", "pwd", "token", "access_token",
                                      "secret", "api_key", "key")

# scheme://user:password@ -- the user as SQLAlchemy reads it (up to the first ':'), the password up to
# the *last* '@' before whitespace or a quote: SQLAlchemy stops a password at the first '@', requests
# and urllib at the last one, and a masked path now and then is better than half a password shown.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/\s'\"]*:)(?P<password>[^\s'\"]+)(?=@)")
# ?password=..., &token=..., ;Pwd=... (ODBC) and ' password=...' (a libpq key=value string).
_PARAMETER = re.compile(r"(?P<head>(?:^|[?&;\s])(?:" + "|".join(SECRET_PARAMETERS) + r")=)(?P<value>[^&;#\s'\"]+)",
                        re.IGNORECASE)
# Keys whose value is a secret: password, db_passwd, pwd, api_token, client_secret, fs.s3a.secret.key,
# api_key, access_key, private_key, credentials...
_SECRET_KEY = re.compile(r"pass(word|wd)|(^|[^a-z])pwd($|[^a-z])|token|secret|api[._-]?key|access[._-]?key|"
                         r"private[._-]?key|credential", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it and every secret query parameter masked.

    Works on a bare URL or on any text holding URLs (an error message, a log
    line, a whole configuration file); text without secrets is returned as is.

    >>> mask_url("postgresql+psycopg://crm:s3cret@db:5432/crm?sslmode=require&Password=x")
    'postgresql+psycopg://crm:***@db:5432/crm?sslmode=require&Password=***'
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: m["head"] + MASK, text)
    return _PARAMETER.sub(lambda m: m["head"] + MASK, text)


def is_secret_key(key: str) -> bool:
    """Whether a configuration key names a secret (``password``, ``api_token``, ``fs.s3a.secret.key``...)."""
    return bool(_SECRET_KEY.search(str(key)))


def mask_config(value: Any, secret: bool = False) -> Any:
    """A copy of a nested configuration (dicts, lists, scalars) with every secret masked.

    Every text goes through :func:`mask_url`; every value under a key named
    like a secret (:func:`is_secret_key`), however deep, becomes ``***`` unless
    it is missing or empty.
    """
    if isinstance(value, dict):
        return {key: mask_config(item, secret or is_secret_key(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_config(item, secret) for item in value)
    if secret and value is not None and value != "":
        return MASK
    if isinstance(value, str):
        return mask_url(value)
    return value


# A `key: value` line of YAML (in a mapping or a list item), the value a plain or quoted scalar on one line.
_YAML_LINE = re.compile(r"(?m)^(?P<head>[ \t]*(?:-[ \t]+)?(?P<q>[\"']?)(?P<key>[^\s:#\"'{}\[\]][^:#\"'{}\[\]\n]*?)(?P=q)"
                        r"[ \t]*:[ \t]+)(?P<value>[^\s#{}\[\]&*|>!%@`][^\n]*?)(?P<tail>[ \t]+#.*)?$")
_YAML_NULLS = {"null", "Null", "NULL", "~", "''", '""'}


def mask_config_text(text: str) -> str:
    """A YAML configuration file's text with every secret masked, comments and layout kept.

    URLs are masked in place, and so is the value of every ``key: value``
    line whose key names a secret. When the masked text does not read back as
    exactly the masked configuration (a flow-style mapping, a multi-line
    value...), the file is re-emitted from its parsed content with
    :func:`mask_config` instead: its comments are lost, never a secret kept.
    """
    import yaml

    def line(m: re.Match) -> str:
        if not is_secret_key(m["key"]) or m["value"] in _YAML_NULLS:
            return m[0]
        return f"{m['head']}'{MASK}'{m['tail'] or ''}"

    masked = _YAML_LINE.sub(line, mask_url(text))
    try:
        expected = mask_config(yaml.safe_load(text))
    except yaml.YAMLError:
        return masked  # not YAML (load_config refuses such a file): the text masking is all there is
    try:
        if yaml.safe_load(masked) == expected:
            return masked
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)
