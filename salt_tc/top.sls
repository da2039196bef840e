# State top for the tc master (thin clients only).
base:
  'G@deskfleet_role:tc':
    - match: compound
    - tc
