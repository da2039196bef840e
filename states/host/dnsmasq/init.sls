{#- host.dnsmasq — one dnsmasq per interface (issue 5: unicast DHCP renewals dropped).

    For each interface in pillar deskfleet:host:dnsmasq:interfaces this writes one
    instance of the template unit <unit_name>@.service and its <interface>.conf:
    bind-interfaces, exactly one interface=, except-interface=lo, its own dhcp-range,
    pid file and lease file. dnsmasq then binds each instance's DHCP socket to its
    device, so no instance receives (and drops) another one's unicast renewals.
    Instances whose interface left the pillar are stopped and their conf removed.
    Every written path is root ~ a *_dir value of settings.jinja/parameters.
    host.dnsmasq.clean removes all of it. -#}
{%- from tpldir ~ "/settings.jinja" import dnsmasq, problems with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(dnsmasq) }}
{%- set interfaces = dnsmasq.interfaces or {} %}

{%- if problems %}

host-dnsmasq-pillar-invalid:
  test.fail_without_changes:
    - name: deskfleet:host:dnsmasq
    - comment: {{ ("pillar deskfleet:host:dnsmasq: " ~ problems | join("; ")) | json }}

{%- else %}
{%- set stale = [] %}
{%- if salt['file.directory_exists'](dnsmasq.conf_path) %}
{%-   for path in salt['file.find'](dnsmasq.conf_path, type='f', name='*.conf', maxdepth=1) | sort %}
{%-     set name = salt['file.basename'](path)[:-5] %}
{%-     if name not in interfaces %}{% do stale.append(name) %}{% endif %}
{%-   endfor %}
{%- endif %}

{%- if dnsmasq.manage_pkg and dnsmasq.pkg %}

host-dnsmasq-pkg:
  pkg.installed:
    - name: {{ dnsmasq.pkg }}
{%- endif %}

host-dnsmasq-dirs:
  file.directory:
    - names:
      - {{ dnsmasq.conf_path }}
      - {{ dnsmasq.run_path }}
      - {{ dnsmasq.lease_path }}
{%- if dnsmasq.log_path %}
      - {{ dnsmasq.log_path }}
{%- endif %}
    - makedirs: True
    - mode: '0755'

host-dnsmasq-unit:
  file.managed:
    - name: {{ dnsmasq.unit_file }}
    - source: salt://{{ tpldir }}/files/dnsmasq-deskfleet@.service.jinja
    - template: jinja
    - makedirs: True
    - mode: '0644'
    - context:
        dnsmasq: {{ dnsmasq | json }}

{%- for name, cfg in interfaces | dictsort %}

host-dnsmasq-conf-{{ name }}:
  file.managed:
    - name: {{ dnsmasq.conf_path }}/{{ name }}.conf
    - source: salt://{{ tpldir }}/files/instance.conf.jinja
    - template: jinja
    - mode: '0644'
    # dnsmasq's own syntax check of the new file before it replaces the old one
    - check_cmd: {{ dnsmasq.bin }} --test -C
    - context:
        dnsmasq: {{ dnsmasq | json }}
        interface: {{ name | json }}
        cfg: {{ cfg | json }}
    - require:
      - file: host-dnsmasq-dirs
{%-   if dnsmasq.manage_pkg and dnsmasq.pkg %}
      - pkg: host-dnsmasq-pkg
{%-   endif %}
{%- endfor %}

{%- for name in stale %}
{%-   if dnsmasq.manage_services %}

host-dnsmasq-stale-service-{{ name }}:
  service.dead:
    - name: {{ dnsmasq.unit_name }}@{{ name }}.service
    - enable: False
{%-   endif %}

host-dnsmasq-stale-conf-{{ name }}:
  file.absent:
    - name: {{ dnsmasq.conf_path }}/{{ name }}.conf
{%-   if dnsmasq.manage_services %}
    - require:
      - service: host-dnsmasq-stale-service-{{ name }}
{%-   endif %}
{%- endfor %}

{%- if dnsmasq.manage_services %}
{%-   for unit in dnsmasq.replaces %}

host-dnsmasq-replaces-{{ unit }}:
  service.dead:
    - name: {{ unit }}
    - enable: False
{%-   endfor %}

host-dnsmasq-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: host-dnsmasq-unit
{%-   for name in interfaces | sort %}

host-dnsmasq-service-{{ name }}:
  service.running:
    - name: {{ dnsmasq.unit_name }}@{{ name }}.service
    - enable: True
    - require:
      - cmd: host-dnsmasq-daemon-reload
{%-     for unit in dnsmasq.replaces %}
      - service: host-dnsmasq-replaces-{{ unit }}
{%-     endfor %}
    - watch:
      - file: host-dnsmasq-unit
      - file: host-dnsmasq-conf-{{ name }}
{%-   endfor %}
{%- endif %}
{%- endif %}
