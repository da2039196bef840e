# A pool desktop was taken by a user: top the pool up. Validation is in the runner.
pool-taken:
  runner.vmpool.on_event:
    - args:
      - tag: {{ tag }}
      - data: {{ data | json }}
