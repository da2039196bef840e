"""How harness/readme_examples.py reads README code blocks: switches, markers, indented blocks."""

from harness import readme_examples, saltconf

SAMPLE = """
# title

```bash
make demo    # [not run: own lab]
```

1. step
   ```bash
   use_tc
   salt-run enroll.list state=issued   # who issued what
   # prose inside the block
   salt-run tc_inventory.list limit=ten   # [exits 1] names the parameter
   ```

```yaml
deskfleet: {}
```

```bash
# [not run: no compute host here]
use_vm
salt -G deskfleet_role:compute host_dnsmasq.audit
```

```bash
use_vm
salt-run vmpool.status
use_tc
salt-run message.send 'tc-*' 'hello' site=LON
```
"""


def test_blocks_markers_and_switches():
    got = [(e.command.split("#")[0].strip(), e.switch, e.expect, e.skip) for e in readme_examples.examples(SAMPLE)]
    assert got == [
        ("make demo", "", 0, "own lab"),
        ("salt-run enroll.list state=issued", "use_tc", 0, ""),
        ("salt-run tc_inventory.list limit=ten", "use_tc", 1, ""),
        ("salt -G deskfleet_role:compute host_dnsmasq.audit", "use_vm", 0, "no compute host here"),
        ("salt-run vmpool.status", "use_vm", 0, ""),
        ("salt-run message.send 'tc-*' 'hello' site=LON", "use_tc", 0, ""),
    ]


def test_line_numbers_point_at_the_readme_line():
    lines = SAMPLE.splitlines()
    for example in readme_examples.examples(SAMPLE):
        assert lines[example.line - 1].strip() == example.command


def test_every_runnable_readme_example_names_its_master():
    examples = readme_examples.examples((saltconf.CHECKOUT / "README.md").read_text())
    assert examples, "README.md has no CLI example"
    orphans = [f"README:{e.line}: {e.command}" for e in examples if not e.skip and not e.switch]
    assert not orphans, "start the block with use_tc or use_vm, or mark the line [not run: why]: " + "; ".join(orphans)
