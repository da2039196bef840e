# A new pool desktop's minion started: baseline it, then mark it ready (orchestration).
# The subject is the id in the tag; data.id is passed along only to be cross-checked (both can be
# forged through the batched event form: the runner checks the key store and Nova instead).
{%- set vm = tag.split('/')[2] %}
pool-vm-ready:
  runner.state.orchestrate:
    - args:
      - mods: orchestration.pool_vm_ready
      - pillar:
          vm: {{ vm | json }}
          data_id: {{ data.get('id') | json }}
