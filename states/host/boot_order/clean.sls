{#- Undo host.boot_order: remove the drop-ins (and their directories when nothing else is in them) and take
    --delete-transient-ports out of the OVS defaults file (the line goes when nothing else was in it). -#}
{%- from tpldir ~ "/settings.jinja" import boot_order, ovs_opts with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(boot_order) }}
{%- set dropin_ids = [] %}

{%- for unit in boot_order.units %}
{%-   set dropin_dir = boot_order.unit_dir ~ '/' ~ unit ~ '.d' %}
{%-   do dropin_ids.append('host-boot-order-clean-dropin-' ~ unit) %}
host-boot-order-clean-dropin-{{ unit }}:
  file.absent:
    - name: {{ dropin_dir }}/{{ boot_order.dropin_name }}
{%-   if salt['file.directory_exists'](dropin_dir) and (salt['file.readdir'](dropin_dir) | reject('in', ['.', '..', boot_order.dropin_name]) | list | length == 0) %}

host-boot-order-clean-dropin-dir-{{ unit }}:
  file.absent:
    - name: {{ dropin_dir }}
    - require:
      - file: host-boot-order-clean-dropin-{{ unit }}
{%-   endif %}
{%- endfor %}

{%- set var = boot_order.ovs_opts_var %}
{%- set opts = ovs_opts(boot_order.defaults_file, var).split() %}
{%- if '--delete-transient-ports' in opts %}
{%-   set rest = opts | reject('equalto', '--delete-transient-ports') | list %}

host-boot-order-clean-transient-ports:
  file.replace:
    - name: {{ boot_order.defaults_file }}
{%-   if rest %}
    - pattern: '^(?:export\s+)?{{ var }}=.*$'
    - repl: '{{ var }}="{{ rest | join(' ') }}"'
{%-   else %}
    - pattern: '^(?:export\s+)?{{ var }}=.*\n?'
    - repl: ''
{%-   endif %}
    - backup: False
    - ignore_if_missing: True
{%- endif %}

{%- if boot_order.daemon_reload and not boot_order.root and salt['file.directory_exists']('/run/systemd/system') %}

host-boot-order-clean-daemon-reload:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
{%-   for id in dropin_ids %}
      - file: {{ id }}
{%-   endfor %}
{%- endif %}
