# salt-run state.orch orchestration.pool_vm_ready pillar='{"vm": "dfp-sales-1a2b3c4d", "tag": "salt/minion/dfp-sales-1a2b3c4d/start"}'
{%- set vm = pillar.get('vm', '') %}
{%- set tag = pillar.get('tag', 'salt/minion/' ~ vm ~ '/start') %}

check-sender:
  salt.runner:
    - name: vmpool.on_event
    - tag: {{ tag | json }}
    - data: {{ {'id': vm} | json }}
    - failhard: True

# A fresh desktop has none of deskfleet's code: the execution modules import _utils
# (escrow, rollouts), so sync everything (utils included), not only the modules.
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
    - sls: win
    - require:
      - salt: desktop-sync

mark-ready:
  salt.runner:
    - name: vmpool.mark_ready
    - server: {{ vm | json }}
    - require:
      - salt: desktop-baseline
