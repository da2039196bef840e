# Pools of pre-booted desktops (see pillar/vm.pools.pillar.example for every key).
# Sites list their pools here; an empty mapping keeps the keeper idle.
deskfleet:
  pools: {}
