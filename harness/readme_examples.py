"""
The CLI examples of README.md, run against a running lab (``make lab-up``).

An example is a command line in a ```bash block (comment lines are prose). Each block
that runs starts with ``use_tc`` or ``use_vm`` (the lab's switch between the masters,
defined in ``<lab>/env.sh``); a later switch in the block applies to the lines after it.
Markers, visible in the README next to the command:

* ``# [exits 1] ...``: meant to fail; the example must exit 1;
* ``# [not run: reason]``: not run against the lab, for that reason; as the first line of
  a block it covers the whole block;
* every other example must exit 0.

    python -m harness.readme_examples [--lab DIR] [--readme README.md] [-k SUBSTRING]
"""

import argparse
import dataclasses
import pathlib
import re
import subprocess
import sys
import time

from harness import lab_up, saltconf

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NOT_RUN = re.compile(r"#.*\[not run: ([^\]]+)\]")
EXITS = re.compile(r"#.*\[exits (\d+)\]")
SWITCHES = ("use_tc", "use_vm")


@dataclasses.dataclass
class Example:
    line: int  # 1-based line in the README
    command: str
    switch: str  # use_tc / use_vm, or "" if the block named none
    expect: int = 0
    skip: str = ""  # the reason, when not run


def blocks(text):
    """(first line number, [lines]) of every ```bash block, indentation removed."""
    found, current, indent, lang = [], None, "", ""
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if current is None and fence and fence.group(2):
            current, indent, lang = [], fence.group(1), fence.group(2)
            start = number + 1
        elif current is not None and fence and not fence.group(2):
            if lang == "bash":
                found.append((start, current))
            current = None
        elif current is not None:
            current.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
    return found


def examples(text):
    """Every example of the README, in order, with its master, expected exit code or reason not to run."""
    out = []
    for start, lines in blocks(text):
        first = next((ln.strip() for ln in lines if ln.strip()), "")
        block_skip = NOT_RUN.match(first).group(1) if first.startswith("#") and NOT_RUN.match(first) else ""
        switch = ""
        for offset, raw in enumerate(lines):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.split("#")[0].strip() in SWITCHES:
                switch = line.split("#")[0].strip()
                continue
            skip, exits = NOT_RUN.search(line), EXITS.search(line)
            out.append(Example(start + offset, line, switch, int(exits.group(1)) if exits else 0,
                               block_skip or (skip.group(1) if skip else "")))
    return out


def run(example, lab, timeout=300):
    """(exit code, output tail, seconds) of one example, in bash with the lab's env.sh sourced."""
    script = f". {lab / 'env.sh'} && {example.switch or 'true'} && {example.command}"
    started = time.monotonic()
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=str(saltconf.CHECKOUT), capture_output=True,
                              text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        code, out = proc.returncode, (proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired as exc:
        code, out = -1, f"timed out after {timeout} s: {exc.stdout or ''}"
    return code, out[-1500:], time.monotonic() - started


def run_all(readme, lab, pattern="", say=print):
    """Run every example; return [(example, exit code, output tail)] of those that did not exit as expected."""
    failed = []
    for example in examples(pathlib.Path(readme).read_text()):
        if pattern not in example.command:
            continue
        if example.skip:
            say(f"README:{example.line}: not run ({example.skip}): {example.command[:80]}")
            continue
        if not example.switch:
            failed.append((example, None, "the block names no master: start it with use_tc or use_vm"))
            continue
        code, out, seconds = run(example, lab)
        verdict = "ok" if code == example.expect else f"FAILED (exit {code}, expected {example.expect})"
        say(f"README:{example.line}: {example.switch} {example.command[:90]} -> {verdict} [{seconds:.1f} s]")
        if code != example.expect:
            failed.append((example, code, out))
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n", 1)[0])
    parser.add_argument("--lab", help="lab directory (default: as make lab-up)")
    parser.add_argument("--readme", default=str(saltconf.CHECKOUT / "README.md"))
    parser.add_argument("-k", default="", help="only examples containing this text")
    args = parser.parse_args(argv)
    failed = run_all(args.readme, lab_up.lab_dir(args.lab), args.k)
    for example, code, out in failed:
        print(f"\n--- README:{example.line}: {example.command}\n    exit {code}, expected {example.expect}\n{out}")
    print(f"{len(failed)} example(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
