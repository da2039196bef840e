# Thin-client baseline: keep deskfleet's beacon and modules current on every thin client.
{%- from tpldir ~ "/map.jinja" import tc with context %}
{%- for kind in tc.sync %}

tc-sync-{{ kind }}:
  saltutil.sync_{{ kind }}:
    - refresh: {{ tc.refresh | json }}
{%- endfor %}
