"""The initramfs lists every folder before what it holds (the kernel makes no folder)."""

from __future__ import annotations

import stat

from bundle_tool import cpio
from tests.qemu.qemulib import LIB  # noqa: F401 (puts qemu/lib on sys.path)

import initramfs  # isort: skip

DIR = stat.S_IFDIR | 0o755
FILE = stat.S_IFREG | 0o644


def test_a_folder_listed_later_or_never_comes_first() -> None:
    entries = [
        cpio.Entry("init", FILE, b"#!/bin/sh\n"),
        cpio.Entry("lib/abupdate/slot.sh", FILE, b"x"),
        cpio.Entry("lib", DIR),
        cpio.Entry("lib/modules/a.ko", FILE, b"y"),
    ]
    names = [e.name for e in initramfs.parents_first(entries)]
    assert names == [
        *("init", "lib", "lib/abupdate", "lib/abupdate/slot.sh"),
        *("lib/modules", "lib/modules/a.ko"),
    ]
    made = {e.name: e for e in initramfs.parents_first(entries)}
    assert made["lib/abupdate"].mode == DIR and made["lib/modules"].mode == DIR


def test_entries_already_in_order_are_kept_as_they_are() -> None:
    entries = [cpio.Entry("bin", DIR), cpio.Entry("bin/busybox", FILE, b"z")]
    assert initramfs.parents_first(entries) == entries
