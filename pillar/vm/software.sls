{#-
  Software catalog for pushes (vm master): `salt-run software.schedule` and the
  `software` execution module read software:catalog. Shape and every field:
  pillar/vm.software.pillar.example. Keys are what ops pass as software=...;
  versions are quoted strings; sha256 is the installer's, checked on the minion
  after caching and before anything runs.

  deskfleet-demo is the Linux demo/test entry: a shell installer served from this
  checkout that writes a version file and appends one line to an install log.
  The deskfleet_lab_root grain (lab and test minions) moves both under a temp root.
-#}
{%- set root = grains.get('deskfleet_lab_root', '') %}
software:
  catalog:
    deskfleet-demo:
      name: deskfleet demo package
      version: "1.0.0"
      linux:
        source: salt://deskfleet-demo/deskfleet-demo-installer.sh
        sha256: e46f4ce02ffb88bb77f05cc478f056926d47e4218fd4ad1cbc5067a847f06cb2
        args: --version-file {{ root }}/opt/deskfleet-demo/VERSION --log {{ root }}/var/log/deskfleet-demo-install.log
        detect:
          version_file: {{ root }}/opt/deskfleet-demo/VERSION
        remove:
          args: --uninstall --version-file {{ root }}/opt/deskfleet-demo/VERSION --log {{ root }}/var/log/deskfleet-demo-install.log
        timeout: 300
