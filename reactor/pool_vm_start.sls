# A new pool desktop's minion started: baseline it, then mark it ready (orchestration).
pool-vm-ready:
  runner.state.orchestrate:
    - args:
      - mods: orchestration.pool_vm_ready
      - pillar:
          vm: {{ data['id'] | json }}
          tag: {{ tag | json }}
