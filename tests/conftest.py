"""Fixtures shared by more than one test folder."""

from __future__ import annotations

import pytest

from bundle_tool import bootkeys


@pytest.fixture(scope="session")
def boot_keys(tmp_path_factory: pytest.TempPathFactory) -> bootkeys.DevBootKeys:
    """Development boot keys (FIT key, PK/KEK/db, GRUB's gpg key)."""
    return bootkeys.make_dev_boot_keys(tmp_path_factory.mktemp("boot") / "keys")


@pytest.fixture(scope="session")
def other_boot_keys(tmp_path_factory: pytest.TempPathFactory) -> bootkeys.DevBootKeys:
    """A second, unrelated set: what an attacker or another vendor signs with."""
    return bootkeys.make_dev_boot_keys(tmp_path_factory.mktemp("other") / "keys")
