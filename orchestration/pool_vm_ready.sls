# salt-run state.orch orchestration.pool_vm_ready pillar='{"vm": "dfp-sales-1a2b3c4d"}'
# check-sender: accepted minion key + a booting Nova server of a known pool (vmpool.on_event);
# the baseline job is then answered by the desktop over Salt's authenticated return path.
{%- set vm = pillar.get('vm', '') %}
{%- set tag = 'salt/minion/' ~ vm ~ '/start' %}
{%- set data_id = pillar.get('data_id', vm) %}

check-sender:
  salt.runner:
    - name: vmpool.on_event
    - tag: {{ tag | json }}
    - data: {{ {'id': data_id} | json }}
    - failhard: True

# A fresh desktop has none of deskfleet's code: the execution modules import _utils
# (escrow, software_catalog, ...), so sync everything (utils included), not only the modules.
desktop-sync:
  salt.function:
    - name: saltutil.sync_all
    - tgt: {{ vm | json }}
    - kwarg:
        refresh: True
    - require:
      - salt: check-sender

desktop-baseline:
  salt.state:
    - tgt: {{ vm | json }}
    - tgt_type: list   # the exact id, never a glob
    - sls: win
    - require:
      - salt: desktop-sync

mark-ready:
  salt.runner:
    - name: vmpool.mark_ready
    - server: {{ vm | json }}
    - require:
      - salt: desktop-baseline
