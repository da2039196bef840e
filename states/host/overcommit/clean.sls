{#- Undo host.overcommit: remove the nova drop-in, put back the nova.conf lines it commented out (exactly those,
    by their marker), remove the KSM tmpfiles.d file, and put KSM back to the values recorded before the first
    apply (run 0 when nothing was recorded). run 0 stops ksmd and leaves the pages it merged shared; run 2 would
    unmerge them all at once and can itself run an over-committed host out of memory, so it is never written.
    nova-compute is try-restarted (root '' with systemd only) so it reports nova.conf's own ratios again. -#}
{%- from "host/overcommit/settings.jinja" import overcommit as oc with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(oc) }}
{%- set marker = oc.comment_marker %}

host-overcommit-clean-dropin:
  file.absent:
    - name: {{ oc.paths.dropin | yaml_dquote }}

host-overcommit-clean-nova-conf:
  file.replace:
    - name: {{ oc.paths.nova_conf | yaml_dquote }}
    - pattern: '^{{ marker }}'
    - repl: ''
    - show_changes: False
    - backup: False
    - ignore_if_missing: True

{#- KSM: the recorded values, else run 0 #}
{%- set recorded = {} %}
{%- if salt['file.file_exists'](oc.paths.previous) %}
{%-   set text = salt['file.read'](oc.paths.previous) | trim %}
{%-   if text %}{% do recorded.update(text | load_json) %}{% endif %}
{%- endif %}
{%- set restore = [] %}
{%- for key in ['run', 'pages_to_scan', 'sleep_millisecs'] %}
{%-   if recorded.get(key) is not none and (recorded[key] | string | regex_match('^([0-9]+)$')) %}
{%-     do restore.append([key, recorded[key] | int]) %}
{%-   elif key == 'run' %}
{%-     do restore.append([key, 0]) %}
{%-   endif %}
{%- endfor %}
{%- for key, value in restore %}
{%-   set raw = oc.paths.ksm_dir ~ '/' ~ key %}
{%-   if salt['file.file_exists'](raw) %}
{%-     set path = raw | quote %}

host-overcommit-clean-ksm-{{ key }}:
  cmd.run:
    - name: {{ ('echo ' ~ value ~ ' > ' ~ path) | yaml_dquote }}
    - unless: {{ ('test "$(cat ' ~ path ~ ')" = "' ~ value ~ '"') | yaml_dquote }}
    - require_in:
      - file: host-overcommit-clean-ksm-previous
{%-   endif %}
{%- endfor %}

host-overcommit-clean-ksm-tmpfiles:
  file.absent:
    - name: {{ oc.paths.tmpfiles | yaml_dquote }}

host-overcommit-clean-ksm-previous:
  file.absent:
    - name: {{ oc.paths.previous | yaml_dquote }}
{%- set state_dir = oc.paths.previous.rsplit('/', 1)[0] %}
{%- if salt['file.directory_exists'](state_dir) and (salt['file.readdir'](state_dir) | reject('in', ['.', '..', oc.paths.previous.rsplit('/', 1)[1]]) | list | length == 0) %}

host-overcommit-clean-state-dir:
  file.absent:
    - name: {{ state_dir | yaml_dquote }}
    - require:
      - file: host-overcommit-clean-ksm-previous
{%- endif %}

{%- if oc.nova.service.manage and not oc.root and salt['file.directory_exists']('/run/systemd/system') %}

host-overcommit-clean-nova-compute-restart:
  cmd.run:
    - name: systemctl try-restart {{ oc.nova.service.name | quote }}
    - onchanges:
      - file: host-overcommit-clean-dropin
      - file: host-overcommit-clean-nova-conf
{%- endif %}
