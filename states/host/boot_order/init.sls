{#- Compute hosts: libvirt (libvirtd, virtqemud, libvirt-guests) and nova-compute start after Open vSwitch and
    stop before it; OVS deletes transient ports when it starts (issue 4). `host.boot_order.clean` undoes it all.
    Every path is under pillar deskfleet:host:boot_order:root ('' in production). The OVS option takes effect on the
    next OVS start: nothing here restarts OVS or libvirt. -#}
{%- from tpldir ~ "/settings.jinja" import boot_order, ovs_opts with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(boot_order) }}
{%- set dropin_ids = [] %}

{%- for unit in boot_order.units %}
{%-   do dropin_ids.append('host-boot-order-dropin-' ~ unit) %}
host-boot-order-dropin-{{ unit }}:
  file.managed:
    - name: {{ boot_order.unit_dir }}/{{ unit }}.d/{{ boot_order.dropin_name }}
    - source: salt://{{ tpldir }}/files/dropin.conf.jinja
    - template: jinja
    - makedirs: True
    - mode: '0644'
    - context:
        unit: {{ unit | json }}
        ovs_units: {{ boot_order.ovs_units | json }}
        dependency: {{ boot_order.dependency | json }}
{%- endfor %}

{%- if boot_order.transient_ports %}
{%-   set var = boot_order.ovs_opts_var %}
{%-   set opts = ovs_opts(boot_order.defaults_file, var).split() %}
{%-   if '--delete-transient-ports' not in opts %}{% do opts.append('--delete-transient-ports') %}{% endif %}

host-boot-order-ovs-defaults-file:
  file.managed:
    - name: {{ boot_order.defaults_file }}
    - replace: False
    - makedirs: True
    - mode: '0644'
    - contents: '# Options for ovs-ctl (started by the Open vSwitch units).'

host-boot-order-ovs-transient-ports:
  file.replace:
    - name: {{ boot_order.defaults_file }}
    - pattern: '^(?:export\s+)?{{ var }}=.*$'
    - repl: '{{ var }}="{{ opts | join(' ') }}"'
    - append_if_not_found: True
    - backup: False
    - require:
      - file: host-boot-order-ovs-defaults-file
{%- endif %}

{%- if boot_order.verify and salt['cmd.which']('systemd-analyze') %}
{#-   the installed units (real system paths, or under root) that get a drop-in -#}
{%-   set installed = [] %}
{%-   for unit in boot_order.units %}
{%-     for d in ['/etc/systemd/system', '/run/systemd/system', '/lib/systemd/system', '/usr/lib/systemd/system'] %}
{%-       if unit not in installed and (salt['file.file_exists'](d ~ '/' ~ unit) or salt['file.file_exists'](boot_order.root ~ d ~ '/' ~ unit)) %}
{%-         do installed.append(unit) %}
{%-       endif %}
{%-     endfor %}
{%-   endfor %}
{%-   if installed %}

{#- systemd-analyze (252) exits 0 on an ordering cycle: its output is checked too. --man=no: by default it
    fails on any Documentation=man:... page this host lacks (most servers carry no man pages). #}
host-boot-order-verify:
  cmd.run:
    - name: |
        out=$(systemd-analyze verify --man=no {{ installed | join(' ') }} 2>&1); rc=$?
        [ -n "$out" ] && printf '%s\n' "$out"
        if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -qE 'ordering cycle|{{ boot_order.dropin_name | regex_escape }}'; then
          why=$(printf '%s\n' "$out" | grep -E 'ordering cycle|not found|{{ boot_order.dropin_name | regex_escape }}|Failed' | head -n 3 | tr '\n' ' ' | tr -d "'")
          echo "changed=no comment='systemd-analyze verify {{ installed | join(' ') }}: FAILED: $why'"; exit 1
        fi
        echo "changed=no comment='systemd-analyze verify {{ installed | join(' ') }}: ok'"
    - stateful: True
{%-     if boot_order.root %}
    - env:
        SYSTEMD_UNIT_PATH: '{{ boot_order.unit_dir }}:'
{%-     endif %}
    - require:
{%-     for id in dropin_ids %}
      - file: {{ id }}
{%-     endfor %}
{%-   endif %}
{%- endif %}

{%- if boot_order.daemon_reload and not boot_order.root and salt['file.directory_exists']('/run/systemd/system') %}

host-boot-order-daemon-reload:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
{%-   for id in dropin_ids %}
      - file: {{ id }}
{%-   endfor %}
{%-   if boot_order.verify and salt['cmd.which']('systemd-analyze') %}
    - require:
      - cmd: host-boot-order-verify
{%-   endif %}
{%- endif %}
