# Rolling host maintenance (vm master): the maintenance runner does the roll, step by step, journaled.
# salt-run state.orch orchestration.host_maintenance pillar='{"hosts": ["cmp-01", "cmp-02"], "batch": 1, "reason": "kernel 6.1.0-28", "deadline": "+2h"}'
# Optional: "wait_logoff": 1800 (pool desktops in use wait for their user to log off until T-30 min, then move).
# Exits non-zero when the plan refuses a host or a host fails (left disabled; see salt-run maintenance.status).
{%- set fields = ['hosts', 'reason', 'batch', 'max_failures', 'deadline', 'force', 'migration_timeout', 'minion_timeout', 'poll', 'wait_logoff'] %}

roll-hosts:
  salt.runner:
    - name: maintenance.start
{%- for key in fields %}
{%- if key in pillar %}
    - {{ key }}: {{ pillar[key] | json }}
{%- endif %}
{%- endfor %}
