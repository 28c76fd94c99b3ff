# Sourced by /init (busybox sh): which slot booted, its partition, and the dm-verity
# values to open it with. Kept apart from /init so that tests can run it on the host.
#
# abupdate_slot CMDLINE VERITY_FILE SLOT_TABLE IMAGE_ID
#   CMDLINE      the kernel command line (/proc/cmdline)
#   VERITY_FILE  etc/abupdate/verity: ROOT:SALT:BLOCKS, present when the initramfs is the
#                signed one of a FIT or UKI (boot.chain fit or uki)
#   SLOT_TABLE   etc/abupdate/slots: "NAME DEVICE BOOT_DIR" per line, built into the
#                signed initramfs from the board config
#   IMAGE_ID     the efivarfs file of LoaderImageIdentifier (set by systemd-stub: the path
#                of the UKI that was started, e.g. \slot-B\boot.efi), or a missing path
# Sets slot, root, verity and origin; on failure returns 1 with why set.
#
# With a signed initramfs, the root hash comes only from VERITY_FILE and the partition only
# from SLOT_TABLE: abupdate.root= and abupdate.verity= on the command line are ignored, so
# nothing outside the signed image changes what is verified. Without one (boot.chain
# script), the boot script passes both on the command line.
abupdate_slot() {
    slot=""
    root=""
    verity=""
    origin=""
    why=""
    _cmd_root=""
    _cmd_verity=""
    for _arg in $(cat "$1"); do
        case "$_arg" in
            abupdate.root=*) _cmd_root="${_arg#abupdate.root=}" ;;
            abupdate.verity=*) _cmd_verity="${_arg#abupdate.verity=}" ;;
            abupdate.slot=*) slot="${_arg#abupdate.slot=}" ;;
            rauc.slot=*) [ -n "$slot" ] || slot="${_arg#rauc.slot=}" ;;
        esac
    done
    if [ ! -e "$2" ]; then
        origin="command line"
        root="$_cmd_root"
        verity="$_cmd_verity"
        [ -n "$root" ] || { why="no abupdate.root= on the kernel command line"; return 1; }
        [ -n "$verity" ] || { why="no abupdate.verity= on the kernel command line"; return 1; }
        return 0
    fi
    origin="signed initramfs"
    verity="$(cat "$2")"
    [ -r "$3" ] || { why="the signed initramfs has no slot table $3"; return 1; }
    if [ -z "$slot" ] && [ -r "$4" ]; then
        # 4 bytes of attributes, then the path in UTF-16LE (ASCII here).
        _path="$(tail -c +5 "$4" | tr -d '\000' | tr '\\' '/')"
        _dir="${_path#/}"
        _dir="${_dir%/*}"  # the whole folder (EFI/Linux/slot-B), as abctl reads it
        slot="$(awk -v d="$_dir" '$3 == d { print $1; exit }' "$3")"
        [ -n "$slot" ] || { why="booted image $_path is in no slot's boot folder"; return 1; }
    fi
    [ -n "$slot" ] || { why="cannot tell which slot booted (no abupdate.slot=, no LoaderImageIdentifier)"; return 1; }
    case "$slot" in
        *[!A-Za-z0-9_-]*) why="slot name '$slot' is not a plain name"; return 1 ;;
    esac
    root="$(awk -v s="$slot" '$1 == s { print $2; exit }' "$3")"
    [ -n "$root" ] || { why="slot '$slot' is not in the built-in slot table"; return 1; }
    return 0
}
