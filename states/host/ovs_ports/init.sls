# Host-maintenance step (issue 4): audit -> repair -> verify the compute host's Open vSwitch ports
# against libvirt's domains, and fail while any VM port stays broken or orphaned.
#   salt 'cmp-*' state.apply host.ovs_ports            # after a reboot, before re-enabling the compute service
#   salt 'cmp-*' state.apply host.ovs_ports test=True  # nothing runs (module.run reports what would)
#   salt 'cmp-01' host_ovs_ports.repair test=True      # dry run with the exact actions
# Where the daemons are and how careful repair is come from config.get (minion config or pillar):
# deskfleet:host:ovs_ports:ovs_db, :libvirt_uri, :confirm_delay, :settle, :restart_domains, ... (defaults:
# parameters/defaults.yaml; see pillar.example next to this file).
# Needs _modules/host_ovs_ports.py and its _utils synced (saltutil.sync_all).

host-ovs-ports-audit:
  module.run:
    - host_ovs_ports.audit: []

host-ovs-ports-repair:
  module.run:
    - host_ovs_ports.repair: []
    - require:
      - module: host-ovs-ports-audit

host-ovs-ports-verify:
  module.run:
    - host_ovs_ports.verify: []
    - require:
      - module: host-ovs-ports-repair
