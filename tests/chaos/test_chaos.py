"""One test per resize scenario: the checker must find no miss, no stale
read, no undone delete, no lost write and no stranded key.

    make chaos          all scenarios (ASan build)
    make chaos-fast     the fast subset (-m fast): a, b, d, g, n, o, q
"""
import os

import pytest

import scenarios as sc
from checker import ROOT


def check(result):
    summary = result.summary()
    print(summary)
    out = os.path.join(ROOT, "build", "chaos")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.txt"), "a") as f:
        f.write(summary + "\n\n")
    assert result.crashes == 0, summary
    assert result.ops > 0 and result.reads > 0, summary
    assert result.converged, summary
    assert (result.misses, result.stale, result.undone_deletes, result.lost,
            result.stranded) == (0, 0, 0, 0, 0), summary
    assert result.wrong_replies == 0, summary
    assert result.unagreed_moves == 0, summary


@pytest.mark.fast
@pytest.mark.parametrize("proxies", [1, 2])
def test_a_grow_3_to_4(cluster, proxies):
    check(sc.grow_3_to_4(cluster, proxies=proxies))


@pytest.mark.fast
def test_b_shrink_4_to_3(cluster):
    check(sc.shrink_4_to_3(cluster))


def test_c_reweight_one_server_1_to_3(cluster):
    check(sc.reweight(cluster))


@pytest.mark.fast
def test_d_two_proxies_sighup_half_a_second_apart(cluster):
    check(sc.staggered_sighup(cluster, 0.5))


def test_e_rolling_reload_5s_apart(cluster):
    check(sc.staggered_sighup(cluster, 5.0))


def test_f_stray_proxy_on_another_file(cluster):
    check(sc.stray_proxy(cluster))


@pytest.mark.fast
def test_g_set_in_flight_at_the_switch(cluster):
    check(sc.inflight_set(cluster))


def test_h_destination_down_during_the_move(cluster):
    check(sc.backend_stalls(cluster, "dest"))


def test_i_source_down_during_the_move(cluster):
    check(sc.backend_stalls(cluster, "source"))


@pytest.mark.parametrize("restart_with", ["new", "old"])
def test_j_proxy_killed_mid_migration(cluster, restart_with):
    check(sc.proxy_killed(cluster, restart_with))


def test_k_redis_killed_mid_migration(cluster):
    check(sc.redis_killed(cluster))


@pytest.mark.parametrize("when", ["during", "before"])
def test_l_proxy_frozen_past_liveness(cluster, when):
    check(sc.proxy_frozen(cluster, when))


def test_m_second_resize_while_the_first_runs(cluster):
    check(sc.second_resize(cluster))


@pytest.mark.fast
def test_n_keys_written_around_the_proxies_survive_a_resize(cluster):
    check(sc.unindexed_keys(cluster))


@pytest.mark.fast
def test_o_meta_commands_during_a_3_to_4_resize(cluster):
    result = sc.meta_grow_3_to_4(cluster)
    check(result)
    # the meta commands were answered, moving keys' too (none refused)
    assert result.meta_ops > 0 and result.meta_errors == 0, result.summary()
    assert result.meta_moving_ops > 0, result.summary()


def test_p_binary_upgrade_mid_migration_then_resize_back(cluster):
    check(sc.upgrade_mid_migration(cluster))


@pytest.mark.fast
def test_q_clients_move_between_threads_during_a_resize(cluster):
    check(sc.clients_move_between_threads(cluster))
