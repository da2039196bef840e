{#- Nova over-commit + KSM on a compute host, so memory is no longer over-committed until the host runs out
    (OOM) (issue 6). Settings: pillar `deskfleet:host:overcommit` over parameters/ (states/host/map.jinja); every path is under `root`.

    nova: [DEFAULT] ram_allocation_ratio, cpu_allocation_ratio, reserved_host_memory_mb (and
    disk_allocation_ratio when set) go to a drop-in the state owns, <nova>/nova.conf.d/60-deskfleet-overcommit.conf,
    not into nova.conf itself:
    - Salt's ini.options_present rewrites the whole of nova.conf: it dropped the first of two repeated
      MultiStrOpt lines ([pci] device_spec), a commented-out sample line, and re-spaced `key=value` (seen with
      Salt 3008.3). The drop-in leaves nova.conf byte for byte, and .clean is a file.absent.
    - oslo.config reads nova.conf.d by default even when the unit passes --config-file (and always with
      --config-dir), but with --config-file and no --config-dir it reads the directory BEFORE nova.conf, so a
      ram_allocation_ratio left in nova.conf would win (checked with oslo.config 10.7). The state therefore
      comments the managed keys out of nova.conf with a marker (file.replace, no diff shown: nova.conf holds
      secrets) and .clean removes exactly that marker.
    - Another file nova reads (nova-compute.conf, nova.conf.d/*.conf) setting one of these keys to a different
      value is refused: which one nova uses depends on its command line.
    KSM: /sys/kernel/mm/ksm/{pages_to_scan,sleep_millisecs,run} now, and a tmpfiles.d file for every boot;
    the values found before the first apply are recorded for .clean.
    Nothing is written unless host_overcommit.validate (in _modules/host_overcommit.py) passes: ratios > 0,
    reserved_host_memory_mb >= 512, RAM ratio <= ram_ratio_ceiling unless KSM is on and allow_high_ram_ratio.
    Needs the deskfleet execution modules on the minion: saltutil.sync_all (highstate syncs them), or
    `state.apply host.overcommit sync_mods=modules,utils`. -#}
{%- from "host/overcommit/settings.jinja" import overcommit as oc with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(oc) }}
{%- set nova = oc.nova %}
{%- set ksm = oc.ksm %}
{%- set marker = oc.comment_marker %}
{%- set all_keys = ['ram_allocation_ratio', 'cpu_allocation_ratio', 'reserved_host_memory_mb', 'disk_allocation_ratio'] %}

{%- if 'host_overcommit.validate' not in salt %}
host-overcommit-module-missing:
  test.fail_without_changes:
    - name: >-
        host.overcommit needs the host_overcommit execution module and it is not loaded: sync it first
        (salt <minion> saltutil.sync_all, or state.apply host.overcommit sync_mods=modules,utils). Nothing was written.
    - comment: host_overcommit execution module not loaded; run saltutil.sync_all. Nothing was written.

{%- else %}
{%-   set check = salt['host_overcommit.validate'](
          ram_allocation_ratio=nova.ram_allocation_ratio,
          cpu_allocation_ratio=nova.cpu_allocation_ratio,
          reserved_host_memory_mb=nova.reserved_host_memory_mb,
          disk_allocation_ratio=nova.disk_allocation_ratio,
          ksm_enabled=ksm.enabled,
          allow_high_ram_ratio=oc.allow_high_ram_ratio,
          ram_ratio_ceiling=oc.ram_ratio_ceiling,
          pages_to_scan=ksm.pages_to_scan,
          sleep_millisecs=ksm.sleep_millisecs,
          root=oc.root or '',
          nova_dir=nova.config_dir,
          prog=nova.prog,
          dropin=nova.dropin,
          ksm_sysfs=ksm.sysfs) %}
{%-   if not check.result %}
{#- Refuse: one failing state that says what to change (its name too, so test=True shows it), nothing else. #}
host-overcommit-settings:
  test.fail_without_changes:
    - name: {{ ("Refusing host.overcommit: " ~ check.comment ~ " Nothing was written.") | yaml_dquote }}
    - comment: {{ ("Refusing host.overcommit: " ~ check.comment ~ " Nothing was written.") | yaml_dquote }}

{%-   else %}

host-overcommit-nova-dropin:
  file.managed:
    - name: {{ oc.paths.dropin | yaml_dquote }}
    - source: salt://host/overcommit/files/nova-overcommit.conf.jinja
    - template: jinja
    - makedirs: True
    - user: {{ nova.user }}
    - group: {{ nova.group }}
    - mode: {{ nova.mode | string | yaml_dquote }}
    - context:
        nova: {{ nova | json }}
        keys: {{ oc.nova_keys | json }}
        marker: {{ marker | yaml_dquote }}

{#- nova.conf's own settings of the managed keys would beat the drop-in under --config-file: comment them out.
    Only these four [DEFAULT] option names; nova has no option of the same name in another group. #}
host-overcommit-nova-conf:
  file.replace:
    - name: {{ oc.paths.nova_conf | yaml_dquote }}
    - pattern: '^((?:{{ oc.nova_keys | join('|') }})[ \t]*[=:])'
    - repl: '{{ marker }}\1'
    - show_changes: False
    - backup: False
    - ignore_if_missing: True
    - require:
      - file: host-overcommit-nova-dropin
{%-     set released = all_keys | reject('in', oc.nova_keys) | list %}
{%-     if released %}

{#- a key this formula no longer sets (disk_allocation_ratio taken out of the pillar): nova.conf's line comes back #}
host-overcommit-nova-conf-released:
  file.replace:
    - name: {{ oc.paths.nova_conf | yaml_dquote }}
    - pattern: '^{{ marker }}((?:{{ released | join('|') }})[ \t]*[=:])'
    - repl: '\1'
    - show_changes: False
    - backup: False
    - ignore_if_missing: True
{%-     endif %}

{%-     if ksm.enabled %}
{#-   KSM values before the first apply, recorded once (replace: False) for host.overcommit.clean #}
{%-       set previous = {} %}
{%-       for key, _ in oc.ksm_settings %}
{%-         set path = oc.paths.ksm_dir ~ '/' ~ key %}
{%-         if salt['file.file_exists'](path) %}
{%-           do previous.update({key: salt['file.read'](path).strip()}) %}
{%-         endif %}
{%-       endfor %}

host-overcommit-ksm-previous:
  file.managed:
    - name: {{ oc.paths.previous | yaml_dquote }}
    - contents: {{ (previous | json) | yaml_dquote }}
    - replace: False
    - makedirs: True
    - mode: '0644'
{%-       for key, value in oc.ksm_settings %}
{%-         set path = (oc.paths.ksm_dir ~ '/' ~ key) | quote %}

host-overcommit-ksm-{{ key }}:
  cmd.run:
    - name: {{ ('echo ' ~ (value | int) ~ ' > ' ~ path) | yaml_dquote }}
    - unless: {{ ('test "$(cat ' ~ path ~ ')" = "' ~ (value | int) ~ '"') | yaml_dquote }}
    - require:
      - file: host-overcommit-ksm-previous
{%-       endfor %}

host-overcommit-ksm-tmpfiles:
  file.managed:
    - name: {{ oc.paths.tmpfiles | yaml_dquote }}
    - source: salt://host/overcommit/files/tmpfiles-ksm.conf.jinja
    - template: jinja
    - makedirs: True
    - mode: '0644'
    - context:
        sysfs: {{ ksm.sysfs | regex_replace('/+$', '') | yaml_dquote }}
        settings: {{ oc.ksm_settings | json }}
{%-     endif %}

{%-     if nova.service.manage and not oc.root and salt['file.directory_exists']('/run/systemd/system') %}

{#- nova-compute reads the ratios when it starts and then reports them to placement; try-restart leaves a
    stopped nova-compute stopped. Guests keep running across a nova-compute restart. #}
host-overcommit-nova-compute-restart:
  cmd.run:
    - name: systemctl try-restart {{ nova.service.name | quote }}
    - onchanges:
      - file: host-overcommit-nova-dropin
      - file: host-overcommit-nova-conf
{%-     endif %}
{%-   endif %}
{%- endif %}
