"""The fleet client: Eclipse hawkBit's Direct Device Integration (DDI) API (see docs/fleet.md).

`ddi` (the JSON shapes), `cycle` (what to do next) and `feedback` (what to tell the
server) are pure; `client` speaks HTTP, `state` keeps what must survive a reboot,
and `agent` runs one poll cycle with them and the installer.
"""
