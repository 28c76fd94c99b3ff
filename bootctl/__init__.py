"""A/B slot state in U-Boot and GRUB environments, and the boot scripts that use it."""
