base:
  '*':
    - tc_status
