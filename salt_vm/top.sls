# State top for the vm master: desktop VMs and the hosts under them.
base:
  'G@deskfleet_role:desktop':
    - match: compound
    - win
  # compute hosts: libvirt/OVS boot order, one dnsmasq per interface, over-commit + KSM
  'G@deskfleet_role:compute':
    - match: compound
    - host.boot_order
    - host.dnsmasq
    - host.overcommit
  # controllers: RabbitMQ keepalive + heartbeats
  'G@deskfleet_role:controller':
    - match: compound
    - host.rabbitmq
