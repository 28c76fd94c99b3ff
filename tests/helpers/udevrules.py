"""A strict reader of udev rules files, for checking shipped rules without `udevadm verify`.

`udevadm verify` exists from systemd 254 on; Debian 12 ships 252. This reader
follows udev(7) and systemd's `src/udev/udev-rules.c` (`parse_line`,
`parse_token`, the style checks of `check_token_delimiters`) and
`src/udev/udev-format.c` (`udev_check_format`), and refuses what udevd would
ignore or warn about:

* a line is comma-separated `KEY[{attr}] OP "value"` triples; a trailing `\\`
  continues it on the next line (leading whitespace dropped); `#` starts a
  comment line;
* only the documented keys, each with the operators it takes, and an `{attr}`
  exactly where the key needs one;
* one comma and then whitespace between two triples, none before the first or
  after the last;
* `%x` and `$name` substitutions that udev knows, in the values it substitutes;
* no `ENV{...}` assignment to a property the kernel or udevd owns;
* every line does something (a line of matches only is ignored by udevd).

`Rule.matches` and `Rule.apply` evaluate a rule on a device's properties, for
tests of what a rule starts.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

MATCH_OPS = frozenset({"==", "!="})
_OPERATORS = ("==", "!=", "+=", "-=", ":=", "=")


@dataclass(frozen=True)
class _Key:
    ops: frozenset[str]
    attr: str  # "none", "required" or "optional"
    attrs: frozenset[str] = frozenset()  # the allowed {attr} values, if limited
    substituted: bool = True  # whether assigned values go through udev's format


def _key(ops: str, attr: str = "none", attrs: str = "", substituted: bool = True) -> _Key:
    return _Key(frozenset(ops.split()), attr, frozenset(attrs.split()), substituted)


_MATCH_ONLY = "== !="
KEYS: dict[str, _Key] = {
    "ACTION": _key(_MATCH_ONLY),
    "DEVPATH": _key(_MATCH_ONLY),
    "KERNEL": _key(_MATCH_ONLY),
    "KERNELS": _key(_MATCH_ONLY),
    "SUBSYSTEM": _key(_MATCH_ONLY),
    "SUBSYSTEMS": _key(_MATCH_ONLY),
    "DRIVER": _key(_MATCH_ONLY),
    "DRIVERS": _key(_MATCH_ONLY),
    "TAGS": _key(_MATCH_ONLY),
    "RESULT": _key(_MATCH_ONLY),
    "ATTRS": _key(_MATCH_ONLY, "required"),
    "CONST": _key(_MATCH_ONLY, "required", "arch virt"),
    "TEST": _key(_MATCH_ONLY, "optional"),
    "NAME": _key("== != = :="),
    "SYMLINK": _key("== != = += -= :="),
    "ENV": _key("== != = +=", "required"),
    "TAG": _key("== != = += -="),
    "ATTR": _key("== != =", "required"),
    "SYSCTL": _key("== != =", "required"),
    "PROGRAM": _key("== != = += :="),
    "IMPORT": _key("== != = += :=", "required", "file program builtin db cmdline parent"),
    "OPTIONS": _key("= += :=", substituted=False),
    "OWNER": _key("= :="),
    "GROUP": _key("= :="),
    "MODE": _key("= :="),
    "SECLABEL": _key("= +=", "required"),
    "RUN": _key("= += :=", "optional", "program builtin"),
    "LABEL": _key("=", substituted=False),
    "GOTO": _key("=", substituted=False),
}
# Keys whose value is substituted (and checked) even with a match operator.
_ALWAYS_SUBSTITUTED = frozenset({"TEST", "PROGRAM", "IMPORT"})
# Keys whose value must not be empty (TAG only when assigned).
_NONEMPTY = frozenset(
    {"TAG", "TEST", "PROGRAM", "IMPORT", "RUN", "SECLABEL", "OWNER", "GROUP", "MODE"}
)

# Properties that the kernel or udevd set; udevd refuses ENV{...} assignments to them.
READ_ONLY_PROPERTIES = frozenset(
    {
        *("ACTION", "SEQNUM", "SYNTH_UUID", "DEVPATH", "DEVPATH_OLD", "SUBSYSTEM", "DEVTYPE"),
        *("DRIVER", "MODALIAS", "DEVNAME", "DEVMODE", "DEVUID", "DEVGID", "MAJOR", "MINOR"),
        *("DISKSEQ", "PARTN", "IFINDEX", "INTERFACE", "INTERFACE_OLD", "DEVLINKS", "TAGS"),
        *("CURRENT_TAGS", "USEC_INITIALIZED", "UDEV_DATABASE_VERSION"),
    }
)

# One option per OPTIONS key (udevd warns about and ignores anything else).
_OPTIONS = frozenset(
    {"dump", "string_escape=none", "string_escape=replace", "db_persist", "watch", "nowatch"}
)
_OPTION_PREFIXES = ("static_node=", "link_priority=", "log_level=")

# udev-format.c: `$name` and `%c` substitutions; attr and env need `{name}`.
_SUBST_NAMES = {
    "devnode": "N",
    "tempnode": "N",
    "attr": "s",
    "sysfs": "s",
    "env": "E",
    "kernel": "k",
    "number": "n",
    "driver": "d",
    "devpath": "p",
    "id": "b",
    "major": "M",
    "minor": "m",
    "result": "c",
    "parent": "P",
    "name": "D",
    "links": "L",
    "root": "r",
    "sys": "S",
}
_SUBST_CHARS = frozenset(_SUBST_NAMES.values())
_KEY_NAME = re.compile(r"[A-Z][A-Z_]*")


class RuleSyntaxError(ValueError):
    """A rules file that udevd would refuse, ignore in part, or warn about."""


@dataclass(frozen=True)
class Token:
    """One `KEY{attr} OP "value"` triple."""

    key: str
    attr: str | None
    op: str
    value: str

    @property
    def is_match(self) -> bool:
        return self.op in MATCH_OPS


@dataclass(frozen=True)
class Rule:
    """One logical rule line (continuations joined)."""

    line: int
    tokens: tuple[Token, ...] = field(default=())

    def matches(self, properties: dict[str, str]) -> bool:
        """Whether the rule's ACTION, SUBSYSTEM, DEVPATH and ENV matches hold.

        `properties` holds the device's uevent properties (ACTION, SUBSYSTEM,
        DEVTYPE, ...) and what earlier rules imported (ID_BUS, ID_FS_USAGE, ...).
        Other match keys are not evaluated (a rule using them is refused here).
        """
        for t in self.tokens:
            if not t.is_match:
                continue
            if t.key == "ENV":
                assert t.attr is not None
                actual = properties.get(t.attr, "")
            elif t.key in ("ACTION", "SUBSYSTEM", "DEVPATH"):
                actual = properties.get(t.key, "")
            else:
                raise NotImplementedError(f"evaluating {t.key} is not supported")
            hit = any(fnmatch.fnmatchcase(actual, p) for p in t.value.split("|"))
            if hit != (t.op == "=="):
                return False
        return True

    def apply(self, kernel_name: str) -> tuple[dict[str, str], set[str]]:
        """The ENV assignments (with `%k`/`$kernel` substituted) and the tags the rule adds."""
        env: dict[str, str] = {}
        tags: set[str] = set()
        for t in self.tokens:
            if t.is_match:
                continue
            value = re.sub(r"%k|\$kernel", kernel_name, t.value)
            if t.key == "ENV":
                assert t.attr is not None
                if t.op == "+=" and env.get(t.attr):
                    env[t.attr] += " " + value
                else:
                    env[t.attr] = value
            elif t.key == "TAG":
                tags.add(value)
        return env, tags


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each rule: comments and blank lines dropped,
    continuation lines joined the way udevd joins them."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        line = raw.lstrip(" \t")
        if line.startswith("#"):  # skipped even inside a continued rule, as udevd does
            continue
        if pending is not None:
            line = pending[1] + line
        start = pending[0] if pending is not None else number
        if line.endswith("\\"):
            pending = (start, line[:-1])
            continue
        pending = None
        if line.strip():
            out.append((start, line))
    if pending is not None:
        raise RuleSyntaxError(f"line {pending[0]}: the last rule ends with a continuation")
    return out


def check_format(value: str, where: str) -> None:
    """Refuse `%`/`$` substitutions that udev does not know (udev_check_format)."""
    i = 0
    while i < len(value):
        c = value[i]
        if c not in "%$":
            i += 1
            continue
        rest = value[i + 1 :]
        if rest[:1] == c:  # %% or $$
            i += 2
            continue
        name = None
        if c == "%" and rest[:1] in _SUBST_CHARS:
            name, length = rest[0], 1
        elif c == "$":
            for word, char in _SUBST_NAMES.items():
                if rest.startswith(word):
                    name, length = char, len(word)
                    break
        if name is None:
            raise RuleSyntaxError(f"{where}: unknown substitution at {value[i:]!r} in {value!r}")
        i += 1 + length
        attr = None
        if value[i : i + 1] == "{":
            end = value.find("}", i)
            if end < 0 or end == i + 1:
                raise RuleSyntaxError(f"{where}: bad {{...}} after a substitution in {value!r}")
            attr = value[i + 1 : end]
            i = end + 1
        if name in "sE" and not attr:
            raise RuleSyntaxError(f"{where}: %{name} needs {{name}} in {value!r}")
        if name == "c" and attr is not None and not re.fullmatch(r"\d+\+?", attr):
            raise RuleSyntaxError(f"{where}: %c{{N}} or %c{{N+}} expected in {value!r}")


def _check_delimiters(between: str, where: str, *, first: bool, last: bool) -> None:
    commas = between.count(",")
    if first or last:
        if commas:
            raise RuleSyntaxError(f"{where}: stray {'leading' if first else 'trailing'} comma")
        return
    if commas != 1:
        raise RuleSyntaxError(f"{where}: one comma expected between two keys, found {commas}")
    before, _, after = between.partition(",")
    if before:
        raise RuleSyntaxError(f"{where}: whitespace before a comma")
    if not after:
        raise RuleSyntaxError(f"{where}: whitespace expected after a comma")


def _check_token(t: Token, where: str) -> None:
    spec = KEYS.get(t.key)
    if spec is None:
        raise RuleSyntaxError(f"{where}: unknown key {t.key!r}")
    if t.op not in spec.ops:
        raise RuleSyntaxError(f"{where}: {t.key} does not take {t.op!r} ({' '.join(spec.ops)})")
    if t.attr is None and spec.attr == "required":
        raise RuleSyntaxError(f"{where}: {t.key} needs {{...}}")
    if t.attr is not None:
        if spec.attr == "none":
            raise RuleSyntaxError(f"{where}: {t.key} takes no {{...}}")
        if not t.attr or (spec.attrs and t.attr not in spec.attrs):
            raise RuleSyntaxError(f"{where}: {t.key}{{{t.attr}}} is not valid")
        if t.key == "TEST" and not re.fullmatch(r"0?[0-7]{1,4}", t.attr):
            raise RuleSyntaxError(f"{where}: TEST{{{t.attr}}} is not an octal mode")
        if t.key == "ENV" and not t.is_match and t.attr in READ_ONLY_PROPERTIES:
            raise RuleSyntaxError(f"{where}: ENV{{{t.attr}}} cannot be set")
        if t.key in ("ATTR", "ATTRS", "SYSCTL"):
            check_format(t.attr, where)
    if t.key == "OPTIONS" and not (t.value in _OPTIONS or t.value.startswith(_OPTION_PREFIXES)):
        raise RuleSyntaxError(f"{where}: unknown OPTIONS value {t.value!r}")
    if t.key in _NONEMPTY and not t.value and not (t.key == "TAG" and t.is_match):
        raise RuleSyntaxError(f"{where}: {t.key} needs a value")
    if t.key in _ALWAYS_SUBSTITUTED or (not t.is_match and spec.substituted):
        check_format(t.value, where)


_KEY = re.compile(r"(?P<key>[^\s={+\-!:]+)(?:\{(?P<attr>[^}]*)\})?[ \t]*")
_VALUE = re.compile(r'(?P<prefix>[ei]{0,2})"(?P<body>(?:[^"\\]|\\.)*)"')


def parse_rule(number: int, line: str) -> Rule:
    """Parse one logical rule line; raise RuleSyntaxError if udevd would not take it as is."""
    tokens: list[Token] = []
    pos = 0
    while True:
        where = f"line {number}"
        rest = line[pos:]
        gap = len(rest) - len(rest.lstrip(" \t,"))
        between = rest[:gap]
        pos += gap
        at_end = pos >= len(line)
        _check_delimiters(between, where, first=not tokens, last=at_end and bool(tokens))
        if at_end:
            break
        m = _KEY.match(line, pos)
        if m is None or not _KEY_NAME.fullmatch(m["key"]):
            raise RuleSyntaxError(f"{where}: a key expected at {line[pos:]!r}")
        pos = m.end()
        op = next((o for o in _OPERATORS if line.startswith(o, pos)), None)
        if op is None:
            raise RuleSyntaxError(f"{where}: an operator expected after {m['key']}")
        pos += len(op)
        pos += len(line[pos:]) - len(line[pos:].lstrip(" \t"))
        v = _VALUE.match(line, pos)
        if v is None or len(set(v["prefix"])) != len(v["prefix"]):
            raise RuleSyntaxError(f"{where}: a double-quoted value expected after {m['key']}{op}")
        if "i" in v["prefix"] and op not in MATCH_OPS:
            raise RuleSyntaxError(f"{where}: the i prefix is only for == and !=")
        body = v["body"]
        if "e" in v["prefix"]:
            body = body.encode("latin-1", "backslashreplace").decode("unicode_escape")
        else:
            body = body.replace('\\"', '"')
        pos = v.end()
        token = Token(m["key"], m["attr"], op, body)
        _check_token(token, f"{where}, {m['key']}")
        tokens.append(token)
        if pos < len(line) and line[pos] not in " \t,":
            raise RuleSyntaxError(f"{where}: a comma expected after {m['key']}{op}{v[0]}")
    if not tokens:
        raise RuleSyntaxError(f"line {number}: no keys")
    if all(t.is_match and t.key not in ("PROGRAM", "IMPORT") for t in tokens):
        raise RuleSyntaxError(f"line {number}: the rule only matches; it has no effect")
    return Rule(number, tuple(tokens))


def parse_rules(path: Path) -> list[Rule]:
    """Every rule of a rules file, checked strictly.

    Raises:
        RuleSyntaxError: naming the line and what is wrong.
    """
    text = path.read_text(encoding="utf-8")
    return [parse_rule(number, line) for number, line in logical_lines(text)]
