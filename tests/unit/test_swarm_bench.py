"""
The swarm bench's own arithmetic and its simulator's one trick: a bug here would print
"0 lost" or "1.0 auth request per seat" for a run that lost events or resent sign-ins.
"""

import pathlib
import subprocess
import sys
import textwrap
import types

from bench import swarm_phases, swarm_report

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def _seat(acked=(), failed=(), epoch=7, auth_sends=1, signed_in=(), pubs_seen=()):
    return {"acked": list(acked), "failed": list(failed), "epoch": epoch, "auth_sends": auth_sends,
            "signed_in": list(signed_in), "pubs_seen": list(pubs_seen)}  # fmt: skip


def test_an_acknowledged_event_the_store_never_took_is_lost():
    stats = {
        "tc-1": _seat(acked=[1, 2, 3]),  # stored up to 3: nothing lost
        "tc-2": _seat(acked=[1, 2, 3]),  # the store stopped at 2: the last one lost
        "tc-3": _seat(acked=[1, 2, 3]),  # a gap the store counted as missed
        "tc-4": _seat(acked=[1, 2]),  # no row at all: both lost
        "tc-5": _seat(acked=[1], failed=[[2, "TimeoutError"]], epoch=8),  # a restart the store did not see
        "tc-6": _seat(),  # never acknowledged anything: not counted
    }
    rows = {"tc-1": (7, 3, 0), "tc-2": (7, 2, 0), "tc-3": (7, 3, 1), "tc-5": (7, 1, 0)}
    out = swarm_report.loss_and_duplication(stats, (rows, {"duplicate": 2, "stale": 1, "accepted": 9}, 5))
    assert out["lost"] == 0 + 1 + 1 + 2 + 0
    assert out["seats_missing_in_store"] == 1 and out["epoch_mismatch"] == 1
    assert out["events_acked"] == 12 and out["events_failed_at_seat"] == 1
    assert out["duplicates_absorbed"] == 3 and out["store_accepted"] == 9 and out["inventory_seats"] == 5


def test_auth_figures_count_resends_and_time_from_the_publication():
    stats = {
        "tc-1": _seat(auth_sends=1, signed_in=[101.0, 150.0], pubs_seen=[100.5]),
        "tc-2": _seat(auth_sends=3, signed_in=[104.0], pubs_seen=[100.2]),
        "tc-3": _seat(auth_sends=2, signed_in=[], pubs_seen=[]),  # still out: no time, not signed in
    }
    out = swarm_report.auth_figures(stats, {"a": 4, "b": 1}, seats=3, since=100.0)
    assert out["auth_requests"] == 6 and out["auth_requests_per_seat"] == 2.0 and out["auth_requests_max_one_seat"] == 3
    assert out["signed_in"] == 2 and out["signed_in_max_s"] == 4.0 and out["master_auths_processed"] == 5
    assert out["publication_reached"] == 2 and out["publication_reached_max_s"] == 0.5


def test_storm_fields_say_all_in_only_when_every_seat_signed_in():
    def res(signed_in):
        return {"auth": {"signed_in": signed_in, "auth_requests_per_seat": 1.0, "signed_in_max_s": 9.5},
                "cpu": {"master_cpu_s": 3.0, "master_pss_mb": 500}, "current": {"ok": signed_in, "stuck": 0}}  # fmt: skip

    full, short = {}, {}
    swarm_report._storm(full, "x", res(10), 10)  # pylint: disable=protected-access
    swarm_report._storm(short, "x", res(9), 10)  # pylint: disable=protected-access
    assert full["x_all_in_s"] == 9.5 and short["x_all_in_s"] is None


def test_ramp_sizes_are_sorted_and_unique():
    assert swarm_phases._ramp_sizes(types.SimpleNamespace(sizes="5000,1000, 2500,1000", seats=0)) == [1000, 2500, 5000]
    assert swarm_phases._ramp_sizes(types.SimpleNamespace(sizes="", seats=200)) == [200]


def test_the_simulator_shares_one_zeromq_context_per_process_and_salt_cannot_destroy_it():
    # its own interpreter: the patch is process-wide and this pytest runs real Salt elsewhere
    probe = textwrap.dedent("""
        import zmq, zmq.asyncio, zmq.eventloop.future
        from bench import swarm_seat
        swarm_seat._share_zmq_contexts()
        a, b = zmq.asyncio.Context(), zmq.asyncio.Context()
        f = zmq.eventloop.future.Context()
        sock = a.socket(zmq.SUB)
        b.destroy(0)  # what Salt does when one channel closes
        b.term()
        other = a.socket(zmq.SUB)  # the other seats' sockets still work
        assert a is b and f is zmq.eventloop.future.Context() and f is not a, "not shared"
        assert not a.closed and a.max_sockets == 8192, (a.closed, a.max_sockets)
        sock.close(0); other.close(0)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_simulator_loads_its_own_keys_without_the_rsa_consistency_check():
    # an inconsistent key (wrong CRT exponent) loads only when the check is skipped: proof the skip is in force
    probe = textwrap.dedent("""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        good = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
        bad = rsa.RSAPrivateNumbers(good.p, good.q, good.d, good.dmp1 + 2, good.dmq1, good.iqmp, good.public_numbers)
        pem = bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        try:
            serialization.load_pem_private_key(pem, None)
        except ValueError:
            pass
        else:
            raise SystemExit("the inconsistent key loaded before the patch")
        from bench import swarm_seat
        swarm_seat._trust_own_keys()
        import salt.crypt
        salt.crypt.PrivateKey(pem)  # Salt's own loader, as a seat's sign-in uses it
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout[-500:], out.stderr[-2000:])


def test_an_unknown_variant_is_refused_before_anything_starts():
    run = subprocess.run([sys.executable, "-m", "bench.swarm", "--variants", "shipped,fast"], cwd=CHECKOUT,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 2 and "--variants: unknown fast (known: default, shipped, salt_master)" in run.stderr
    assert "lab in" not in run.stdout  # refused before a master or a temp dir


def test_the_salt_master_variant_removes_exactly_what_the_shipped_master_d_sets():
    from bench import swarm  # pylint: disable=import-outside-toplevel
    from harness import saltconf  # pylint: disable=import-outside-toplevel

    shipped = saltconf.shipped_master_config("tc")
    seats, master = swarm.VARIANTS["salt_master"]
    assert seats == {} and set(master) == {"worker_pools", "zmq_backlog"}
    assert shipped["worker_pools"]["auth"]["commands"] == ["_auth"]  # what the variant takes away is shipped
    assert shipped["zmq_backlog"] != master["zmq_backlog"]


def test_the_simulator_builds_no_event_bus_and_lists_entry_points_once():
    probe = textwrap.dedent("""
        import salt.utils.entrypoints, salt.utils.event
        from bench import swarm_seat
        swarm_seat._patch_salt()
        with salt.utils.event.get_event("minion", opts={}, listen=False) as bus:  # as Salt's sign-in uses it
            assert bus.fire_event({"x": 1}, "tag") is True
        assert not hasattr(salt.utils.event.get_event("minion"), "subscriber"), "a real SaltEvent was built"
        listing = salt.utils.entrypoints.iter_entry_points
        first = listing("salt.loader")
        # an lru_cache, not the wrapper that clears it every 0.5 s
        assert listing("salt.loader") is first and listing.cache_info().hits >= 1, listing.cache_info()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout[-500:], out.stderr[-2000:])


def test_a_phase_that_breaks_leaves_the_figures_before_it_and_says_where_it_stopped():
    step = {"seats": 10000, "login": {"auth": {"auth_requests_per_seat": 1.0}},
            "steady": {"master_cpu_core_share": 0.69, "master_pss_mb": 1313, "load": 6.8, "ok": 9990}}
    storm = {"auth": {"signed_in": 39, "auth_requests_per_seat": 2.0, "signed_in_max_s": 124.7},
             "cpu": {"master_cpu_s": 16.3, "master_pss_mb": 1003}, "current": {"ok": 20, "stuck": 9980}}
    res = {"auth_timeout": 120, "reached": 10000, "stopped_by": None, "seats": 10000, "ramp": [step],
           "reauth": storm, "phase_failed": "rotation: TimeoutExpired('salt-key')",
           "loss": {"lost": 0, "events_failed_at_seat": 0, "duplicates_absorbed": 0, "inventory_seats": 10000}}
    out = swarm_report.summary({"shipped": res}, types.SimpleNamespace(sizes="10000"), 1.0)
    assert out["shipped_phase_failed"].startswith("rotation:") and out["shipped_steady_seats_current_at_10000"] == 9990
    assert out["shipped_reauth_signed_in"] == 39 and out["shipped_reauth_all_in_s"] is None  # not all: no "all in"
    assert "shipped_rotation_signed_in" not in out and "shipped_status_storm_seats" not in out
