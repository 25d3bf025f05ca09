"""Key and value templates: checking them (config) and filling them in (model).

Runs on: whichever thread calls it (the CLI at start-up to check; the main loop and the
one-shot commands to fill in). Pure: no I/O, no state.

Placeholders are str.format's `{name}` with three additions:

- `{label:NAME}` is the container's label NAME (Docker's label-name grammar); a container
  without the label, or whose value has characters a key or a config file cannot take, is
  skipped with a reason;
- `{json}` / `{json:NAME,NAME}` (value template only) is one JSON object with the
  registration's facts and the named labels the container has (see JSON_FIELDS);
- `{proto}` is `tcp` or `udp`.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Mapping

FIELDS = frozenset(
    {
        "prefix",
        "service",
        "port",
        "ip",
        "node",
        "container",
        "container_port",
        "container_id",
        "proto",
    }
)
LABEL = "label"
JSON = "json"
# Docker's label-key grammar (docs: "Docker object labels"): lower-case letters and digits,
# `.` and `-`, beginning and ending with a letter or digit, no `..`, `--`, `.-` or `-.`.
LABEL_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|[.-](?=[a-z0-9]))*$")
# What a label's value may hold to be put in a key or a plain value: nothing that can end a
# line or a statement in the file a consumer renders from it (nginx's `;`, `{`, spaces).
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:@/\-]*$")
MAX_LABEL_VALUE = 128
# The keys of `{json}`'s object, for consumers; `labels` holds the chosen labels present.
JSON_FIELDS = (
    "address",
    "host",
    "port",
    "proto",
    "service",
    "node",
    "container",
    "container_id",
    "labels",
)


class TemplateError(ValueError):
    """A template that cannot be used; the message says why (without naming the option)."""


Part = tuple[str, str | None, str]  # (literal text, placeholder or None, its argument)


@functools.lru_cache(maxsize=64)
def parse(template: str, *, allow_json: bool = True) -> tuple[Part, ...]:
    """The template's parts; TemplateError when a placeholder is unknown or malformed."""
    try:
        raw = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"bad template {template!r}: {exc}") from None
    parts: list[Part] = []
    for literal, name, spec, conversion in raw:
        if name is None:
            parts.append((literal, None, ""))
            continue
        if conversion:
            raise TemplateError(f"placeholders take no !conversion, got {template!r}")
        if name == LABEL:
            if not LABEL_NAME_RE.fullmatch(spec or ""):
                raise TemplateError(
                    f"{{label:{spec}}}: a label name is lower-case letters, digits, . and - "
                    "(beginning and ending with a letter or digit), e.g. {label:weight}"
                )
        elif name == JSON:
            if not allow_json:
                raise TemplateError("{json} belongs in the value template, not in keys")
            for label in label_list(spec or ""):
                if not LABEL_NAME_RE.fullmatch(label):
                    raise TemplateError(
                        f"{{json:{spec}}}: {label!r} is not a label name (lower-case letters, "
                        "digits, . and -)"
                    )
        elif spec:
            raise TemplateError(f"placeholders take no :format, got {template!r}")
        elif name not in FIELDS:
            known = ", ".join("{" + f + "}" for f in sorted(FIELDS))
            raise TemplateError(
                f"unknown placeholder {{{name}}}; use {known}, {{label:NAME}} or {{json}}"
            )
        parts.append((literal, name, spec or ""))
    return tuple(parts)


def label_list(spec: str) -> list[str]:
    """`weight,zone` -> ["weight", "zone"] (empty entries ignored)."""
    return [part.strip() for part in spec.split(",") if part.strip()]


def labels_used(template: str) -> frozenset[str]:
    """The label names a template reads ({label:NAME} and {json:NAME,...})."""
    names: set[str] = set()
    for _, name, spec in parse(template):
        if name == LABEL:
            names.add(spec)
        elif name == JSON:
            names.update(label_list(spec))
    return frozenset(names)


def fill(template: str, fields: Mapping[str, object], labels: Mapping[str, str]) -> str:
    """The template filled in; TemplateError naming the label when one cannot be used."""
    out: list[str] = []
    for literal, name, spec in parse(template):
        out.append(literal)
        if name is None:
            continue
        if name == LABEL:
            out.append(label_value(spec, labels))
        elif name == JSON:
            out.append(json_value(fields, labels, label_list(spec)))
        else:
            out.append(str(fields[name]))
    return "".join(out)


def label_value(name: str, labels: Mapping[str, str]) -> str:
    """A label's value as a template may use it, or TemplateError."""
    if name not in labels:
        raise TemplateError(f"the templates use label {name}, which the container does not have")
    value = labels[name]
    if not LABEL_VALUE_RE.fullmatch(value) or len(value) > MAX_LABEL_VALUE:
        shown = value.encode("unicode_escape").decode("ascii")[:60]
        raise TemplateError(
            f"label {name}={shown!r} has characters a template cannot take "
            f"(use A-Z a-z 0-9 . _ : @ / -, at most {MAX_LABEL_VALUE})"
        )
    return value


def json_value(fields: Mapping[str, object], labels: Mapping[str, str], chosen: list[str]) -> str:
    """The registration as one compact JSON object, keys sorted, so equal facts give equal
    values (and no rewrite in etcd)."""
    ip = str(fields["ip"])
    document = {
        "address": f"{ip}:{fields['port']}",
        "host": ip.strip("[]"),
        "port": fields["port"],
        "proto": fields["proto"],
        "service": fields["service"],
        "node": fields["node"],
        "container": fields["container"],
        "container_id": fields["container_id"],
        "labels": {name: labels[name] for name in chosen if name in labels},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
