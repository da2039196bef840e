# Beacon settings for every thin client. The heartbeat comes from the tc master's
# config (deskfleet:tc:heartbeat) so the beacon and offline detection agree.
{%- set tc = opts.get('deskfleet', {}).get('tc', {}) %}
beacons:
  tc_status:
    # checked every `interval` minion loops; emits only on change or heartbeat
    - interval: {{ tc.get('beacon_interval', 5) }}
    - heartbeat: {{ tc.get('heartbeat', 300) }}
    - jitter: 0.2
    - idle_after: 600
    # Lab/demo thin clients read their facts from a fake root; real ones from /.
    - root: {{ grains.get('deskfleet_lab_root', '/') | yaml_encode }}
