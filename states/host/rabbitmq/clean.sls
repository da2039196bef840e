{#- Undo host.rabbitmq: remove the files it wrote and put the keepalive sysctls back to the kernel defaults
    (deskfleet:host:rabbitmq:clean:sysctl) in the running kernel. The RabbitMQ service is left as it is: restart it to
    drop tcp_listen_options.keepalive from its listeners. -#}
{%- from "host/rabbitmq/settings.jinja" import host_rabbitmq as hr with context %}
{%- from "host/map.jinja" import deprecation with context %}
{{- deprecation(hr) }}

host-rabbitmq-clean-sysctl-config:
  file.absent:
    - name: {{ hr.paths.sysctl_config | yaml_dquote }}

{%- for key, value in hr.clean.sysctl | dictsort %}

host-rabbitmq-clean-sysctl-{{ key }}:
  module.run:
    - sysctl.assign:
      - name: net.ipv4.{{ key }}
      - value: {{ value | int }}
    - unless: test "$(cat /proc/sys/net/ipv4/{{ key }})" = "{{ value | int }}"
{%- endfor %}

{%- if hr.broker.manage %}

host-rabbitmq-clean-conf:
  file.absent:
    - name: {{ hr.paths.broker_config | yaml_dquote }}
{%- endif %}

{%- for project, path in hr.paths.oslo | dictsort %}

host-rabbitmq-clean-oslo-{{ project }}:
  file.absent:
    - name: {{ path | yaml_dquote }}
{%- endfor %}
