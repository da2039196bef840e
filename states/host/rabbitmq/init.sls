{#- RabbitMQ + kernel TCP keepalive + AMQP heartbeats, so a firewall's idle timeout cannot silently cut
    OpenStack's AMQP connections (issue 5). Settings: pillar `deskfleet:host:rabbitmq` over parameters/ (states/host/map.jinja).
    Nothing is written unless tcp_keepalive_time + tcp_keepalive_intvl * tcp_keepalive_probes is below
    deskfleet:host:rabbitmq:firewall_idle_timeout (host_rabbitmq.validate, in _modules/host_rabbitmq.py).
    Needs the deskfleet execution modules on the minion: saltutil.sync_all (highstate syncs them), or
    `state.apply host.rabbitmq sync_mods=modules,utils`. -#}
{%- from "host/rabbitmq/settings.jinja" import host_rabbitmq as hr with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(hr) }}
{%- set sysctl = hr.sysctl %}
{%- set broker = hr.broker %}
{%- set oslo = hr.oslo_messaging %}

{%- if 'host_rabbitmq.validate' not in salt %}
host-rabbitmq-module-missing:
  test.fail_without_changes:
    - name: >-
        host.rabbitmq needs the host_rabbitmq execution module and it is not loaded: sync it first
        (salt <minion> saltutil.sync_all, or state.apply host.rabbitmq sync_mods=modules,utils). Nothing was written.
    - comment: host_rabbitmq execution module not loaded; run saltutil.sync_all. Nothing was written.

{%- else %}
{%-   set check = salt['host_rabbitmq.validate'](
          time=sysctl.tcp_keepalive_time,
          intvl=sysctl.tcp_keepalive_intvl,
          probes=sysctl.tcp_keepalive_probes,
          firewall_idle_timeout=hr.firewall_idle_timeout,
          heartbeat=broker.heartbeat,
          heartbeat_timeout_threshold=oslo.heartbeat_timeout_threshold,
          heartbeat_rate=oslo.heartbeat_rate) %}
{%-   if not check.result %}
{#- Refuse: one failing state that says what to change (its name too, so test=True shows it), nothing else. #}
host-rabbitmq-keepalive-settings:
  test.fail_without_changes:
    - name: {{ ("Refusing host.rabbitmq: " ~ check.comment ~ " Nothing was written.") | yaml_dquote }}
    - comment: {{ ("Refusing host.rabbitmq: " ~ check.comment ~ " Nothing was written.") | yaml_dquote }}

{%-   else %}

{#- Kernel keepalive timers (per network namespace), persisted to a sysctl.d file. #}
{%-     for key in ('tcp_keepalive_time', 'tcp_keepalive_intvl', 'tcp_keepalive_probes') %}
host-rabbitmq-sysctl-{{ key }}:
  sysctl.present:
    - name: net.ipv4.{{ key }}
    - value: {{ sysctl[key] | int }}
    - config: {{ hr.paths.sysctl_config | yaml_dquote }}
{%-     endfor %}

{%-     if broker.manage %}

host-rabbitmq-conf:
  file.managed:
    - name: {{ hr.paths.broker_config | yaml_dquote }}
    - source: salt://host/rabbitmq/files/rabbitmq.conf.jinja
    - template: jinja
    - makedirs: True
    - user: {{ broker.user }}
    - group: {{ broker.group }}
    - mode: {{ broker.mode | string | yaml_dquote }}
    - context:
        broker: {{ broker | json }}
        firewall_idle_timeout: {{ hr.firewall_idle_timeout | int }}
        sysctl_config: {{ sysctl.config | yaml_dquote }}

{%-       if broker.service.manage %}

{#- Keepalive is a listener option: it takes effect for connections accepted after a restart. For a cluster,
    apply with batching (salt -b 1 ...) so nodes restart one at a time. #}
host-rabbitmq-service:
  service.running:
    - name: {{ broker.service.name }}
    - enable: True
    - watch:
      - file: host-rabbitmq-conf
{%-       endif %}
{%-     endif %}

{%-     for project, path in hr.paths.oslo | dictsort %}

host-rabbitmq-oslo-{{ project }}:
  file.managed:
    - name: {{ path | yaml_dquote }}
    - source: salt://host/rabbitmq/files/oslo_messaging_rabbit.conf.jinja
    - template: jinja
    - makedirs: True
    - user: {{ oslo.user }}
    - group: {{ oslo.group }}
    - mode: {{ oslo.mode | string | yaml_dquote }}
    - context:
        project: {{ project | yaml_dquote }}
        oslo: {{ oslo | json }}
{%-     endfor %}
{%-   endif %}
{%- endif %}
