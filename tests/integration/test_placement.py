"""Keys land where the ring says, and where twemproxy would put them.

`ringproxy locate` is the ring's answer; the servers' own key lists
(`lru_crawler metadump`) are the facts. twemproxy (nutcracker) reads the
same YAML file, so for every hash it supports, a key it stores must be on
the server `ringproxy locate` names for that file.
"""
import random

import pytest

from harness import Nutcracker, Wire, free_port, locate, pool_yaml


def varied_keys(n, seed):
    """n distinct keys: ASCII of many shapes, and some with bytes >= 0x80."""
    rng = random.Random(seed)
    keys = set()
    printable = bytes(range(0x21, 0x7f))
    high = bytes(range(0x80, 0x100))
    while len(keys) < n:
        shape = len(keys) % 4
        if shape == 0:
            k = b"user:%d:profile" % rng.randrange(10 ** 9)
        elif shape == 1:
            k = bytes(rng.choice(printable) for _ in range(rng.randrange(1, 60)))
        elif shape == 2:
            k = "ключ-%d-κλειδί" % rng.randrange(10 ** 6)
            k = k.encode()
        else:
            k = b"bin-" + bytes(rng.choice(high + printable) for _ in range(rng.randrange(1, 40)))
        keys.add(k)
    return sorted(keys)


def hash_tag_keys(n, seed):
    """Keys for hash_tag "{}": tagged, untagged, and the edge cases."""
    rng = random.Random(seed)
    edge = [b"{}", b"a{}b", b"{x", b"x}", b"}{y}", b"{a}{b}", b"{{a}}", b"pre{tag}",
            b"{tag}post", b"{t\xc3\xa4g}", b"}", b"{", b"{}{a}"]
    keys = set(edge)
    while len(keys) < n:
        tag = b"%d" % rng.randrange(50)
        keys.add(rng.choice([b"user:{%s}:%d", b"{%s}.%d", b"x%s}{%d}"]) %
                 (tag, rng.randrange(10 ** 6)))
    return sorted(keys)


def set_all(port, keys, noreply):
    """Store every key (value = key) in one pipelined write; wait for it."""
    with Wire(port, timeout=30) as w:
        suffix = b" noreply" if noreply else b""
        w.send(b"".join(b"set %s 0 0 %d%s\r\n%s\r\n" % (k, len(k), suffix, k) for k in keys))
        if noreply:
            # One get over every key reaches every backend behind the sets.
            reply = w.call(b"get " + b" ".join(keys) + b"\r\n")
            assert reply.count(b"\r\nVALUE ") + reply.startswith(b"VALUE ") == len(keys)
        else:
            replies = [w.read_line() for _ in keys]
            assert replies == [b"STORED\r\n"] * len(keys)


def placement(servers):
    """{key: server name} from each server's own key list."""
    where = {}
    for name, mc in servers.items():
        for k in mc.keys():
            assert k not in where, "%r is on %s and %s" % (k, where[k], name)
            where[k] = name
    return where


def first_mismatch(keys, actual, predicted):
    wrong = [k for k in keys if actual.get(k) != predicted.get(k)]
    if not wrong:
        return None
    return "%d of %d keys disagree; first: key %r is stored on %s, " \
        "`ringproxy locate` says %s" % (len(wrong), len(keys), wrong[0],
                                        actual.get(wrong[0]), predicted.get(wrong[0]))


@pytest.mark.parametrize("weights,names,settings", [
    ([1, 1, 1], True, {}),
    ([1, 2, 3], False, {"hash": "md5"}),
    ([5, 3, 1], True, {"hash": "crc32a", "hash_tag": "{}"}),
], ids=["default-fnv1a_64-named", "md5-weighted-by-address", "crc32a-hash_tag"])
def test_each_backend_holds_exactly_the_keys_the_ring_assigns_it(cluster, weights,
                                                                  names, settings):
    mcs = cluster.memcached(3)
    proxy = cluster.pool(mcs, weights=weights, names=names, **settings)
    keys = varied_keys(8000, 1) + hash_tag_keys(2000, 2)
    set_all(proxy.port, keys, noreply=True)
    by_identity = {("mc%d" % (i + 1)) if names else mc.addr: mc for i, mc in enumerate(mcs)}
    predicted = locate(proxy.conf_path, keys)
    actual = placement(by_identity)
    assert len(actual) == len(keys)
    assert first_mismatch(keys, actual, predicted) is None, first_mismatch(keys, actual, predicted)
    for name in by_identity:        # so that every server's list is checked
        assert any(predicted[k] == name for k in keys), name


NUTCRACKER_HASHES = ["md5", "fnv1a_64", "fnv1a_32", "fnv1_64", "fnv1_32", "crc32",
                     "crc32a", "crc16", "one_at_a_time", "murmur", "jenkins",
                     "hsieh"]


@pytest.mark.parametrize("hash_name,hash_tag",
                         [(h, None) for h in NUTCRACKER_HASHES] + [("fnv1a_64", "{}")],
                         ids=NUTCRACKER_HASHES + ["fnv1a_64-hash_tag"])
def test_keys_stored_through_nutcracker_are_where_ringproxy_locate_says(cluster, hash_name,
                                                                          hash_tag):
    if not Nutcracker.installed():
        pytest.skip("nutcracker (twemproxy) is not installed: "
                    "scripts/install-deps.sh --bench installs it")
    mcs = cluster.memcached(3)
    settings = {"hash": hash_name, "distribution": "ketama"}
    if hash_tag:
        settings["hash_tag"] = hash_tag
    port = free_port()
    conf = pool_yaml("alpha", port, [(mc.addr, 1, "mc%d" % (i + 1)) for i, mc in enumerate(mcs)],
                     **settings)
    nut = Nutcracker(cluster.workdir, conf, port)
    cluster.started.append(nut)
    nut.start()
    keys = (hash_tag_keys(2000, 3) if hash_tag else varied_keys(2000, 4))
    set_all(nut.port, keys, noreply=False)
    actual = placement({"mc%d" % (i + 1): mc for i, mc in enumerate(mcs)})
    predicted = locate(nut.conf_path, keys)
    assert len(actual) == len(keys)
    mismatch = first_mismatch(keys, actual, predicted)
    assert mismatch is None, "hash %s: nutcracker and ringproxy disagree: %s" % (
        hash_name, mismatch)
