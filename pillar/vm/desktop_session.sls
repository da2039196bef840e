# Desktops report who is logged on (host maintenance recycles a pool desktop whose user
# logged off instead of moving it). Sync the beacon once: salt -G deskfleet_role:desktop saltutil.sync_beacons
beacons:
  desktop_session:
    - interval: 10      # seconds between reads (utmp on Linux, quser on Windows)
    - heartbeat: 300    # a report at least this often, shortened by up to jitter at random
    - jitter: 0.2
    - idle_after: 600   # idle/active changes emit at once
