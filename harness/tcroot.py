"""
Fake thin-client hardware: a directory laid out like the parts of / that the
``tc_status`` beacon reads, so lab thin clients report distinct, changeable facts.
"""

import json
import os
import pathlib
import time
import uuid


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make(root, seat_no, firmware="13.1.0", site="LON", department="sales", ip=None, session=None, idle=5.0):
    """Create a fake root for thin client number ``seat_no``; returns its path."""
    root = pathlib.Path(root)
    ip = ip or f"10.20.{seat_no // 250}.{seat_no % 250 + 2}"
    mac = "52:54:00:{:02x}:{:02x}:{:02x}".format((seat_no >> 16) & 255, (seat_no >> 8) & 255, seat_no & 255)
    dmi = root / "sys/class/dmi/id"
    _write(dmi / "product_serial", f"TC{seat_no:06d}\n")
    _write(dmi / "product_name", "UD3-M350C\n")
    _write(dmi / "sys_vendor", "IGEL Technology\n")
    _write(dmi / "bios_version", "1.09\n")
    _write(root / "sys/class/net/lo/address", "00:00:00:00:00:00\n")
    _write(root / "sys/class/net/eth0/address", mac + "\n")
    _write(
        root / "proc/net/route",
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0114000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n",
    )
    _write(
        root / "proc/net/fib_trie",
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n"
        f"     |-- {ip}\n        /32 host LOCAL\n"
        "     |-- 127.0.0.1\n        /32 host LOCAL\n",
    )
    _write(root / "proc/uptime", "3600.25 7000.10\n")
    _write(root / "proc/sys/kernel/random/boot_id", str(uuid.uuid4()) + "\n")
    set_firmware(root, firmware)
    _write(root / "etc/deskfleet/asset.conf", f"site={site}\ndepartment={department}\nasset_id=A-{seat_no:05d}\n")
    set_session(root, *(session or (None, "none")))
    touch_input(root, idle)
    return root


def set_firmware(root, version):
    _write(
        pathlib.Path(root) / "etc/os-release",
        f'PRETTY_NAME="deskfleet thin client {version}"\nID=debian\nIMAGE_ID=deskfleet-tc\nIMAGE_VERSION={version}\n',
    )


def set_session(root, target, state):
    _write(pathlib.Path(root) / "run/deskfleet/session.json", json.dumps({"target": target, "state": state}))


def touch_input(root, idle_seconds):
    """Pretend the user last touched keyboard/mouse ``idle_seconds`` ago."""
    path = pathlib.Path(root) / "dev/input/by-path/platform-i8042-serio-0-event-kbd"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    when = time.time() - idle_seconds
    os.utime(path, (when, when))
