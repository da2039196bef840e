# deskfleet entry points. `make demo` and `make test` each set up what they need.
PY      ?= $(shell command -v python3.11 || command -v python3)
# Outside the checkout: a venv of ~30k files does not belong next to the code the masters serve. One venv per lock.
VENV    ?= $(HOME)/.cache/deskfleet/venv-$(shell sha256sum requirements.lock | cut -c1-12)
PYTHON  := $(VENV)/bin/python
T       ?=
STAMP   := $(VENV)/.installed

.PHONY: demo lab-up lab-down lab-status test bench bench-ingest bench-flood bench-filedist bench-vmpool bench-maintenance bench-active-users bench-inventory bench-swarm setup system-packages clean

demo: setup
	$(PYTHON) -m harness.demo

# A lab that stays up (both masters, Nova, thin clients, desktops) under $$DESKFLEET_LAB or /tmp/deskfleet-lab:
# lab-up prints the one line to source; every CLI example in README.md then runs as written.
lab-up: setup
	@$(PYTHON) -m harness.lab_up up

lab-status:
	@$(PYTHON) -m harness.lab_up status

lab-down:
	@$(PYTHON) -m harness.lab_up down

# no T: integration beside the other tiers (tools/run-tests.sh); T="...": one pytest with those arguments
test: setup
	@tools/run-tests.sh $(PYTHON) $(T)

bench: bench-ingest bench-flood bench-filedist bench-vmpool bench-maintenance bench-active-users bench-inventory bench-swarm

bench-ingest: setup
	$(PYTHON) -m bench.ingest

bench-flood: setup
	$(PYTHON) -m bench.flood

bench-filedist: setup
	$(PYTHON) -m bench.filedist

bench-vmpool: setup
	$(PYTHON) -m bench.vmpool_plan
	$(PYTHON) -m bench.pool_refill

bench-maintenance: setup
	$(PYTHON) -m bench.maintenance_plan && $(PYTHON) -m bench.maintenance_roll

bench-active-users: setup
	$(PYTHON) -m bench.active_users

bench-inventory: setup
	$(PYTHON) -m bench.inventory_rows

# the box is shared: SEATS=500 or fewer there; SIZES=1000,2500,5000,10000 ramps one master through them in one run
# (about 40 min with STEADY=300, the shipped heartbeat; see README "Capacity (tc master)")
SEATS ?= 200
SIZES ?= $(SEATS)
STEADY ?= 60
bench-swarm: setup
	$(PYTHON) -m bench.swarm --sizes $(SIZES) --steady $(STEADY)

setup: system-packages $(STAMP)

system-packages:
	@tools/install-system-packages.sh

# order-only: on a fresh box python3.11 and venv come from system-packages first
$(STAMP): requirements.lock | system-packages
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip==26.3
	$(VENV)/bin/pip install -q --no-deps -r requirements.lock
	$(VENV)/bin/pip check
	touch $@

clean:
	rm -rf $(VENV)
