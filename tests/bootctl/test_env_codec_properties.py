"""Property tests of the environment codecs, checked against the real tools on generated values."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bootctl import grubenv, ubootenv
from tests.bootctl.envtools import fw_printenv, grub_editenv_list, write_config

# Names as shells and the tools accept them; values are any printable text without NUL
# (and, for the line-oriented tool listings, without newlines).
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,15}", fullmatch=True)
VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\0"),
    max_size=40,
)
ENVS = st.dictionaries(NAMES, VALUES, max_size=8)


@given(ENVS, st.sampled_from([0x00, 0xFF]))
def test_uboot_roundtrip(env: dict[str, str], pad: int) -> None:
    blob = ubootenv.encode_single(env, 0x1000, pad)
    assert ubootenv.decode_single(blob, 0x1000) == env
    copy = ubootenv.decode_redundant(ubootenv.encode_redundant(env, 0x1000, 7, pad), 0x1000)
    assert copy is not None
    assert (copy.flags, copy.env) == (7, env)


@given(st.dictionaries(NAMES, VALUES | st.just("a\\b\nc\\"), max_size=8))
def test_grub_roundtrip(env: dict[str, str]) -> None:
    assert grubenv.decode_grubenv(grubenv.encode_grubenv(env)) == env


@settings(max_examples=25, deadline=None)
@given(ENVS)
def test_real_tools_read_generated_envs(env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        path = d / "uboot.env"
        path.write_bytes(ubootenv.encode_single(env, 0x1000))
        assert fw_printenv(write_config(d / "fw.cfg", f"{path} 0 0x1000")) == env
        if sum(len(k) + len(v) + 2 for k, v in env.items()) < 900:
            g = d / "grubenv"
            g.write_bytes(grubenv.encode_grubenv(env))
            assert grub_editenv_list(g) == env
