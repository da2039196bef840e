{#-
  Local administrator passwords, LAPS style (minion: _modules/local_password.py,
  vm master: _runners/password.py). Rendered on the vm master for each of its minions.

  The escrow key here is the PUBLIC half only. It is not kept in git: production puts
  the PEM at the path the vm master's config names in
  deskfleet:vm:passwords:escrow_pubkey_file (default /etc/deskfleet/password-escrow.pub),
  so the pillar and the password runner's fingerprint check read the same file.
  Until that file exists the placeholder below stands, and every rotation is refused
  on the machine with "no escrow public key configured" (nothing is changed).
-#}
{%- set cfg = opts.get('deskfleet', {}).get('vm', {}).get('passwords', {}) %}
{%- set pubkey_file = cfg.get('escrow_pubkey_file', '/etc/deskfleet/password-escrow.pub') %}
{%- set pubkey = cfg.get('escrow_pubkey') %}
{%- if not pubkey and salt['file.file_exists'](pubkey_file) %}
{%-   set pubkey = salt['file.read'](pubkey_file) %}
{%- endif %}
deskfleet:
  passwords:
    # the only local accounts local_password.rotate will touch; the first is the default
    accounts:
      - localadmin
    policy:
      length: 14              # LAPS default; 14..127
      classes: [upper, lower, digit, special]
      max_age_days: 30        # LAPS default; password.status / rotate_due use it
{%- if pubkey %}
    escrow_pubkey: {{ pubkey | yaml_encode }}
{%- else %}
    escrow_pubkey: REPLACE-WITH-THE-ESCROW-PUBLIC-KEY-PEM
{%- endif %}
