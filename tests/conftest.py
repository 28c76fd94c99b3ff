"""Fixtures shared by more than one test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle_tool import bootkeys, keygen
from tests.helpers.goosebit import goosebit_venv


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> keygen.DevPki:
    """A development CA and signer (`bundle-tool keygen`'s), made once per test run."""
    return keygen.make_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def boot_keys(tmp_path_factory: pytest.TempPathFactory) -> bootkeys.DevBootKeys:
    """Development boot keys (FIT key, PK/KEK/db, GRUB's gpg key)."""
    return bootkeys.make_dev_boot_keys(tmp_path_factory.mktemp("boot") / "keys")


@pytest.fixture(scope="session")
def other_boot_keys(tmp_path_factory: pytest.TempPathFactory) -> bootkeys.DevBootKeys:
    """A second, unrelated set: what an attacker or another vendor signs with."""
    return bootkeys.make_dev_boot_keys(tmp_path_factory.mktemp("other") / "keys")


@pytest.fixture(scope="session")
def gb_venv() -> Path:
    """goosebit's own virtual environment, made (or checked) once a session."""
    return goosebit_venv()
