{#- host.dnsmasq.clean — undo host.dnsmasq: stop and disable every instance it runs
    (those in pillar and any conf left in conf_dir), then remove the template unit,
    the conf, run, lease and log directories. Units listed in `replaces` stay
    disabled: re-enable them yourself if you go back to them. -#}
{%- from tpldir ~ "/settings.jinja" import dnsmasq with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(dnsmasq) }}
{%- set names = (dnsmasq.interfaces or {}) | list %}
{%- if salt['file.directory_exists'](dnsmasq.conf_path) %}
{%-   for path in salt['file.find'](dnsmasq.conf_path, type='f', name='*.conf', maxdepth=1) %}
{%-     do names.append(salt['file.basename'](path)[:-5]) %}
{%-   endfor %}
{%- endif %}
{%- set manage = dnsmasq.manage_services and not (dnsmasq.root or '').rstrip('/') %}

{%- if manage %}
{%-   for name in names | unique | sort %}

host-dnsmasq-clean-service-{{ name }}:
  service.dead:
    - name: {{ dnsmasq.unit_name }}@{{ name }}.service
    - enable: False
    - require_in:
      - file: host-dnsmasq-clean-files
{%-   endfor %}
{%- endif %}

host-dnsmasq-clean-files:
  file.absent:
    - names:
      - {{ dnsmasq.unit_file }}
      - {{ dnsmasq.conf_path }}
      - {{ dnsmasq.run_path }}
      - {{ dnsmasq.lease_path }}
{%- if dnsmasq.log_path %}
      - {{ dnsmasq.log_path }}
{%- endif %}

{%- if manage %}

host-dnsmasq-clean-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: host-dnsmasq-clean-files
{%- endif %}
