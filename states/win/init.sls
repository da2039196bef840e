# Desktop VM baseline: deskfleet's execution modules on every desktop.
win-sync-modules:
  saltutil.sync_modules:
    - refresh: True
