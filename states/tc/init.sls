# Thin-client baseline: keep deskfleet's beacon and modules current on every thin client.
tc-sync-beacons:
  saltutil.sync_beacons:
    - refresh: True

tc-sync-modules:
  saltutil.sync_modules:
    - refresh: True
