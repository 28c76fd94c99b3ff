"""The manifest reader against hostile field values: each field refuses what the format does."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootctl import validators
from bundle_tool import verity
from bundle_tool.errors import BundleError, PolicyError
from bundle_tool.manifest import parse_manifest
from bundle_tool.policy import check_policy

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "format": 1,
    "compatible": "test-board",
    "version": "1.0.0",
    "security_version": 0,
    "build_time": 1_700_000_000,
    "images": [
        {
            "slot_class": "rootfs",
            "size": 4096,
            "sha256": "ab" * 32,
            "verity": {
                "hash_algorithm": "sha256",
                "data_block_size": 4096,
                "hash_block_size": 4096,
                "data_blocks": 1,
                "salt": "00" * 32,
                "root_hash": "cd" * 32,
                "tree_size": verity.Geometry.for_blocks(1).area_size,
            },
        }
    ],
    "artifacts": [{"name": "kernel", "size": 10, "sha256": "ef" * 32}],
}

#: Where each string field sits: (path of keys and indexes, key).
STRING_FIELDS = {
    "compatible": ((), "compatible"),
    "version": ((), "version"),
    "architecture": ((), "architecture"),
    "slot_class": (("images", 0), "slot_class"),
    "image architecture": (("images", 0), "architecture"),
    "sha256": (("images", 0), "sha256"),
    "hash_algorithm": (("images", 0, "verity"), "hash_algorithm"),
    "salt": (("images", 0, "verity"), "salt"),
    "root_hash": (("images", 0, "verity"), "root_hash"),
    "artifact name": (("artifacts", 0), "name"),
    "artifact sha256": (("artifacts", 0), "sha256"),
    "elf_machine": (("artifacts", 0), "elf_machine"),
}
GOOD = {
    "compatible": "test-board",
    "version": "1.0.0",
    "architecture": "arm64",
    "slot_class": "rootfs",
    "image architecture": "arm64",
    "sha256": "ab" * 32,
    "hash_algorithm": "sha256",
    "salt": "00" * 32,
    "root_hash": "cd" * 32,
    "artifact name": "kernel",
    "artifact sha256": "ef" * 32,
    "elf_machine": "EM_AARCH64",
}
OPTIONAL = {
    "expires": ((), "expires"),
    "architecture": ((), "architecture"),
    "image architecture": (("images", 0), "architecture"),
    "leaf_summary_size": (("images", 0), "leaf_summary_size"),
    "elf_machine": (("artifacts", 0), "elf_machine"),
}


def with_field(where: tuple[Any, ...], key: str, value: object) -> bytes:
    doc = copy.deepcopy(BASE)
    obj: Any = doc
    for step in where:
        obj = obj[step]
    obj[key] = value
    return json.dumps(doc).encode()


def parse_with(field: str, value: object) -> None:
    where, key = STRING_FIELDS[field]
    parse_manifest(with_field(where, key, value))


def test_the_base_and_every_good_value_parse() -> None:
    for field, value in GOOD.items():
        parse_with(field, value)


@pytest.mark.parametrize("field", sorted(STRING_FIELDS))
def test_a_trailing_newline_is_refused_in_every_string(field: str) -> None:
    """Item 1: `$` matched before a final newline and `bytes.fromhex` skipped whitespace."""
    with pytest.raises(BundleError) as e:
        parse_with(field, GOOD[field] + "\n")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field", ["salt", "root_hash", "sha256", "artifact sha256"])
def test_hex_with_whitespace_inside_is_refused(field: str) -> None:
    good = GOOD[field]
    with pytest.raises(BundleError):
        parse_with(field, good[:2] + " " + good[2:-1])


@pytest.mark.parametrize("version", ["1\u0661.0.0", "1.0.0-\u0661", "\uff11.0.0", "1.0.0+\u00e9"])
def test_non_ascii_digits_are_not_a_version(version: str) -> None:
    """Item 2: `\\d` took any Unicode digit."""
    with pytest.raises(BundleError):
        parse_with("version", version)


@pytest.mark.parametrize("field", sorted(OPTIONAL))
def test_null_is_not_an_absent_optional_key(field: str) -> None:
    """Item 3: an optional key is absent or of its type, never null."""
    where, key = OPTIONAL[field]
    with pytest.raises(BundleError, match=key):
        parse_manifest(with_field(where, key, None))


def test_the_top_level_architecture_is_checked_against_the_device() -> None:
    """Item 4: only each image's architecture was compared."""
    manifest = parse_manifest(with_field((), "architecture", "amd64"))
    at = datetime.now(UTC)
    check_policy(manifest, compatible="test-board", at=at, architecture="amd64")
    with pytest.raises(PolicyError, match="amd64"):
        check_policy(manifest, compatible="test-board", at=at, architecture="arm64")


# The peak of this process alone: `VmHWM` is the high-water mark of the memory the new
# program maps, while `getrusage`'s `ru_maxrss` keeps the size of the forking parent
# (pytest) across the exec.
PEAK_PROBE = """
import re, sys
from bundle_tool.errors import BundleError
from bundle_tool.manifest import parse_manifest
raw = sys.stdin.buffer.read()
try:
    parse_manifest(raw)
except BundleError:
    pass
else:
    sys.exit("accepted")
with open("/proc/self/status") as f:
    print(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))
"""


def test_a_huge_version_is_refused_in_bounded_memory() -> None:
    """Item 5: a 900 KB version of a backtracking shape took about 240 MiB."""
    raw = with_field((), "version", "1.0.0-" + "a." * 450000 + "a!")
    r = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE], input=raw, capture_output=True, cwd=REPO, check=False
    )
    assert r.returncode == 0, r.stderr.decode()
    peak_kib = int(r.stdout)
    assert peak_kib < 64 * 1024, f"peak {peak_kib} KiB"


@pytest.mark.parametrize("key", ["build_time", "expires"])
@pytest.mark.parametrize("value", [2**53, validators.MAX_TIME + 1])
def test_times_beyond_the_calendar_are_refused(key: str, value: int) -> None:
    """Item 6: a time past year 9999 cannot be shown as a date."""
    with pytest.raises(BundleError, match=key):
        parse_manifest(with_field((), key, value))
    parse_manifest(with_field((), key, validators.MAX_TIME))
    datetime.fromtimestamp(validators.MAX_TIME, UTC)  # the bound is a showable date


def test_an_empty_salt_is_refused_by_the_reader() -> None:
    """Item 8: the boot environment refused it only after the whole slot was written."""
    with pytest.raises(BundleError, match="salt"):
        parse_with("salt", "")
    parse_with("salt", "00")
    parse_with("salt", "00" * validators.MAX_SALT_SIZE)
    with pytest.raises(BundleError, match="salt"):
        parse_with("salt", "00" * (validators.MAX_SALT_SIZE + 1))


# -- properties over every field ---------------------------------------------------------------

NAME_FIELDS = ["compatible", "architecture", "slot_class", "image architecture"]
NAME_FIELDS += ["artifact name", "elf_machine"]
HEX_FIELDS = {"sha256": (32, 32), "root_hash": (32, 32), "artifact sha256": (32, 32)}
HEX_FIELDS["salt"] = (validators.MIN_SALT_SIZE, validators.MAX_SALT_SIZE)
# What the format says, written here independently of the reader's code.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", re.ASCII)
SEMVER_RULE = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?",
    re.ASCII,
)
NEAR = st.sampled_from("0123456789aAzZ.-+_ \n\t\u0661\u00e9/:")
TEXT = st.one_of(st.text(NEAR, max_size=80), st.text(max_size=80))


def accepted(field: str, value: object) -> bool:
    try:
        parse_with(field, value)
    except BundleError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(NAME_FIELDS), value=TEXT)
def test_names_follow_the_format_rule(field: str, value: str) -> None:
    assert accepted(field, value) == bool(NAME_RULE.fullmatch(value))


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        TEXT,
        st.from_regex(SEMVER_RULE, fullmatch=True).filter(lambda v: len(v) <= 128),
        st.builds(lambda v, tail: v + tail, st.just("1.2.3"), TEXT),
    )
)
def test_versions_follow_semantic_versioning(value: str) -> None:
    want = len(value) <= validators.MAX_VERSION_LENGTH and bool(SEMVER_RULE.fullmatch(value))
    assert accepted("version", value) == want


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(sorted(HEX_FIELDS)),
    value=st.one_of(
        st.binary(max_size=260).map(bytes.hex),
        st.text(st.sampled_from("0123456789abcdefABCDEF \n\u0661"), max_size=80),
    ),
)
def test_hex_fields_are_exact_lowercase_hex(field: str, value: str) -> None:
    lo, hi = HEX_FIELDS[field]
    exact = re.fullmatch(r"(?:[0-9a-f]{2})*", value, re.ASCII) is not None
    assert accepted(field, value) == (exact and lo <= len(value) // 2 <= hi)


INT_FIELDS = {
    "security_version": ((), "security_version", 0, (1 << 63) - 1),
    "build_time": ((), "build_time", 0, validators.MAX_TIME),
    "expires": ((), "expires", 0, validators.MAX_TIME),
}
ANY_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(sorted(INT_FIELDS)),
    value=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), ANY_JSON),
)
def test_integer_fields_take_integers_in_range_only(field: str, value: object) -> None:
    where, key, lo, hi = INT_FIELDS[field]
    try:
        parse_manifest(with_field(where, key, value))
        ok = True
    except BundleError:
        ok = False
    assert ok == (type(value) is int and lo <= value <= hi)


NOT_A_STRING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.text())
)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(STRING_FIELDS)), value=NOT_A_STRING)
def test_string_fields_refuse_other_types(field: str, value: object) -> None:
    assert not accepted(field, value)
