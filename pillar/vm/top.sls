base:
  '*':
    - pools
