# Desktop VM baseline: deskfleet's code on every desktop, as the vm master serves it
# (salt_vm/fileroot): the execution modules import _utils (escrow, software_catalog, ...),
# so the utils come first; the session beacon reports who is on the desktop.
win-sync-utils:
  saltutil.sync_utils:
    - refresh: True

win-sync-modules:
  saltutil.sync_modules:
    - refresh: True
    - require:
      - saltutil: win-sync-utils

win-sync-beacons:
  saltutil.sync_beacons:
    - refresh: True
    - require:
      - saltutil: win-sync-utils
