# State top for the vm master (desktop VMs; compute hosts join with the host states).
base:
  'G@deskfleet_role:desktop':
    - match: compound
    - win
