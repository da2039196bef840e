base:
  # '*' also covers the vm master's own pillar, which the runners render
  # (pool keeper, software catalog, password policy).
  '*':
    - pools
    - software
    - passwords
  'deskfleet_role:desktop':
    - match: grain
    - desktop_session
