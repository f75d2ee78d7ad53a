/*
 * layout.c — the index's layout in Redis (docs/ARCHITECTURE.md, "The index").
 *
 * Design notes
 * - Layout 1 is one sorted set per v-node, <prefix>:v:<identity>:<point>
 *   (the "base"). Past 128 members Redis turns it into a skiplist: about
 *   135 bytes a key.
 * - Layout 2 keeps every set a listpack: a v-node's keys live in sub-sets
 *   <base>:s<low>, each holding the scores from its low to the next low of
 *   the v-node's directory <prefix>:vd:<identity>:<point> (a sorted set of
 *   the lows, member and score alike). Keys longer than the value
 *   threshold live in <base>:l, so one long key never turns a small set
 *   into a skiplist. A sub-set about to pass the entries threshold splits
 *   at its median first: its upper half becomes a new sub-set and its low
 *   enters the directory, in the same script as the write that found it
 *   full.
 * - Every access is one Lua script (lay_script), so a writer, a split and
 *   a reader never see each other half done: a key is always in the
 *   sub-set the directory names for its score, and a reader of an arc, one
 *   script per page, sees every key added before that page was read.
 *   Pages follow the score, not the sets, so a split between two pages
 *   moves nothing past the reader.
 * - Readers read both layouts, always: the base as well as the sub-sets.
 *   Converting is then only moving entries from the base into layout 2,
 *   in scripts of any size, at any pace, while clients write; nothing
 *   needs to know when it is over.
 * - Which layout writes follow is the ring record's field `layout`, read
 *   by the script itself on every call: no proxy can write a layout the
 *   record no longer names. A record without the field (written by an
 *   older build) is layout 1; no record at all (a new prefix, or a Redis
 *   that lost its data) is layout 2, what the first record will say.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>

#include "layout.h"

/* The functions. R, LIM and VMAX are the caller's locals. */
#define LAY_LIB                                                               \
    "local P = string.sub(R, 1, -6) "                                         \
    /* a record without the field is layout 1; no record yet, the layout */  \
    /* the next one will say (RB_FIRST_RECORD_SCRIPT) */                      \
    "local LAY = redis.call('hget', R, 'layout') "                            \
    "if LAY then LAY = tonumber(LAY) or 1 "                                   \
    "else LAY = redis.call('exists', R) == 1 and 1 or 2 end "                 \
    "local TOP = 4294967295 "                                                 \
    "local function dir(b) return P .. ':vd:' .. string.sub(b, #P + 4) end "  \
    "local function low_of(d, s) "                                            \
    "  return redis.call('zrevrangebyscore', d, s, '-inf', 'LIMIT', 0, 1)[1] end " \
    /* a sub-range's long keys: a list of "<score> <key>" (lay_list_entry) */ \
    "local function lname(b, lo) return b .. ':l' .. lo end "                 \
    "local function lent(s, m) return string.format('%d', tonumber(s)) .. ' ' .. m end " \
    "local function lparse(e) "                                               \
    "  local sp = string.find(e, ' ', 1, true) "                              \
    "  if sp then return tonumber(string.sub(e, 1, sp - 1)), string.sub(e, sp + 1) end end " \
    /* a bound of ZRANGEBYSCORE's form as a number */                         \
    "local function bound(x) "                                                \
    "  if x == '-inf' then return -1 elseif x == '+inf' then return TOP + 1 end " \
    "  return tonumber(x) end "                                               \
    /* what a sub-range holds: its sub-set and its list */                    \
    "local function subcard(b, lo) "                                          \
    "  return redis.call('zcard', b .. ':s' .. lo) + redis.call('llen', lname(b, lo)) end " \
    /* RPUSH of t's entries, a thousand at a time (Lua's stack) */           \
    "local function push(L, t) "                                              \
    "  for i = 1, #t, 1000 do "                                               \
    "    redis.call('rpush', L, unpack(t, i, math.min(i + 999, #t))) end end " \
    /* a list's entries, once each, and their scores; and how many it had */ \
    "local function list_read(L) "                                            \
    "  local all, seen, ents, sc = redis.call('lrange', L, 0, -1), {}, {}, {} " \
    "  for _, e in ipairs(all) do "                                           \
    "    if not seen[e] then seen[e] = true "                                 \
    "      ents[#ents + 1] = e sc[#sc + 1] = lparse(e) or 0 end end "         \
    "  return ents, sc, #all end "                                            \
    /* where a sub-range splits: the median of its sub-set's and list's */   \
    /* scores (lsc), else the first above the low; nil when it cannot */      \
    "local function split_point(lo, k, lsc) "                                 \
    "  lo = tonumber(lo) "                                                    \
    /* (and, sub-set alone, the rank of at when every rank below scores */   \
    /* less: the halves are then cut by rank, no score read) */               \
    "  if #lsc == 0 then "                                                    \
    "    local h = math.max(math.floor(redis.call('zcard', k) / 2), 1) "      \
    "    local r = redis.call('zrange', k, h - 1, h, 'WITHSCORES') "          \
    "    local at = tonumber(r[4]) "                                          \
    "    if at and at > lo and tonumber(r[2]) < at then return at, h end "    \
    "    if at == nil or at > lo then return at end "                         \
    "    local r = redis.call('zrangebyscore', k, '(' .. lo, '+inf', "        \
    "      'WITHSCORES', 'LIMIT', 0, 1) "                                     \
    "    return tonumber(r[2]) end "                                          \
    "  local sc, z = {}, redis.call('zrange', k, 0, -1, 'WITHSCORES') "       \
    "  for i = 2, #z, 2 do sc[#sc + 1] = tonumber(z[i]) end "                 \
    "  for _, v in ipairs(lsc) do sc[#sc + 1] = v end "                       \
    "  table.sort(sc) "                                                       \
    "  local at = sc[math.floor(#sc / 2) + 1] "                               \
    "  if at == nil or at > lo then return at end "                           \
    "  for _, v in ipairs(sc) do if v > lo then return v end end end "        \
    /* the list written anew (its twins dropped), its entries of score >= */ \
    /* at moved to the list of low `name` (at nil: none moved) */             \
    "local function split_list(L, ents, lsc, had, at, dst) "                  \
    "  local keep, up = {}, {} "                                              \
    "  for i, e in ipairs(ents) do "                                          \
    "    if at and lsc[i] >= at then up[#up + 1] = e else keep[#keep + 1] = e end end " \
    "  if #keep == had then return end "                                      \
    "  redis.call('del', L) push(L, keep) push(dst, up) end "                 \
    /* a set that passed the entries threshold is a skiplist for good: */    \
    /* written again it is a listpack */                                      \
    /* DUMP and RESTORE load it as Redis loads an RDB: a skiplist within */  \
    /* the thresholds becomes a listpack in one walk (ZRANGESTORE builds */   \
    /* one entry by entry, a scan each: several times the CPU) */             \
    "local function recreate(k) "                                             \
    "  if redis.call('zcard', k) > LIM then return end "                      \
    "  local blob = redis.call('dump', k) "                                   \
    "  if blob and type(redis.pcall('restore', k, 0, blob, 'REPLACE')) == 'table' "  \
    "     and redis.call('object', 'encoding', k) == 'listpack' then return end " \
    "  if type(redis.pcall('zrangestore', k, k, 0, -1)) == 'number' then return end " \
    "  local r = redis.call('zrange', k, 0, -1, 'WITHSCORES') "               \
    "  if #r == 0 then return end "                                           \
    "  redis.call('del', k) "                                                 \
    "  for i = 1, #r, 200 do "                                                \
    "    local a = {} "                                                       \
    "    for j = i, math.min(i + 199, #r), 2 do a[#a + 1] = r[j + 1] a[#a + 1] = r[j] end " \
    "    redis.call('zadd', k, unpack(a)) end end "                           \
    /* the median, else the first score above the low (lay_split_at) */       \
    /* the new sub-range's low, or nil when it cannot split */                \
    "local function split(b, d, lo, k) "                                      \
    "  local L, ents, lsc, had = lname(b, lo), {}, {}, 0 "                    \
    "  if redis.call('llen', L) > 0 then ents, lsc, had = list_read(L) end "  \
    "  local at, rank = split_point(lo, k, lsc) "                             \
    "  local name = at and string.format('%d', at) "                          \
    "  split_list(L, ents, lsc, had, at, name and lname(b, name)) "           \
    "  if at == nil then return end "                                         \
    "  local dst = b .. ':s' .. name "                                        \
    /* A listpack is copied whole by COPY (a memcpy, where ZRANGESTORE */    \
    /* inserts entry by entry, a scan each: the split cost half as much), */  \
    /* then each copy loses the other's half; halves of a skiplist (a set */  \
    /* pushed past the threshold) are made listpacks again. COPY wants no */  \
    /* dst (a stray's low may be there already): then entry by entry. */      \
    "  local zn = redis.call('zcard', k) "                                    \
    "  local skip = zn > 0 and redis.call('object', 'encoding', k) ~= 'listpack' " \
    "  local stored = zn == 0 "                                               \
    "  if not stored and redis.call('copy', k, dst) == 1 then "               \
    "    if rank then redis.call('zremrangebyrank', dst, 0, rank - 1) "       \
    "    else redis.call('zremrangebyscore', dst, '-inf', '(' .. name) end "  \
    "    if skip then recreate(dst) end "                                     \
    "    stored = true end "                                                  \
    "  if not stored then "                                                   \
    "    local up = redis.call('zrangebyscore', k, at, '+inf', 'WITHSCORES') " \
    "    local a = {} "                                                       \
    "    for i = 1, #up, 2 do a[#a + 1] = up[i + 1] a[#a + 1] = up[i] end "   \
    "    if #a > 0 then redis.call('zadd', dst, unpack(a)) end end "          \
    "  if rank then redis.call('zremrangebyrank', k, rank, -1) "              \
    "  else redis.call('zremrangebyscore', k, at, '+inf') end "               \
    "  if skip then recreate(k) end "                                         \
    "  redis.call('zadd', d, at, name) "                                      \
    "  return name end "                                                      \
    /* a key longer than VMAX goes in its sub-range's list, once */          \
    "local function add1(b, s, m) "                                           \
    "  if LAY < 2 then return redis.call('zadd', b, s, m) end "               \
    "  local long = #m > VMAX "                                               \
    "  local d = dir(b) "                                                     \
    "  local lo = low_of(d, s) "                                              \
    "  if not lo then lo = '0' redis.call('zadd', d, 0, '0') end "            \
    "  local k = b .. ':s' .. lo "                                            \
    "  if long and redis.call('lpos', lname(b, lo), lent(s, m)) then return 0 end " \
    /* below LIM by the margin writers use too (LAY_SPLIT_ASK): they add */  \
    /* to what they last learnt of the size, not knowing what this adds */    \
    "  if subcard(b, lo) >= LIM - math.floor(LIM / 5) "                       \
    "     and (long or not redis.call('zscore', k, m)) then "                 \
    "    split(b, d, lo, k) "                                                 \
    "    lo = low_of(d, s) k = b .. ':s' .. lo end "                          \
    "  if long then return redis.call('rpush', lname(b, lo), lent(s, m)) > 0 and 1 or 0 end " \
    "  return redis.call('zadd', k, s, m) end "                               \
    /* m out of every sub-range of low <= s but the one of low `keep`: a */  \
    /* writer with an older directory may have filed it below its own, */     \
    /* even twice; a long key is looked for by its entry "<s> <m>" */         \
    "local function unfile(b, s, m, keep) "                                   \
    "  local n = 0 "                                                          \
    "  local e = s == math.floor(s) and #m > 0 and lent(s, m) "               \
    "  for _, lo in ipairs(redis.call('zrangebyscore', dir(b), '-inf', s)) do " \
    "    if lo ~= keep then "                                                 \
    "      n = n + redis.call('zrem', b .. ':s' .. lo, m) "                   \
    "      if e then n = n + redis.call('lrem', lname(b, lo), 0, e) end end end " \
    "  return n end "                                                         \
    /* every place the key can be: the base, the sub-ranges */                \
    "local function rem1(b, s, m) "                                           \
    "  local n = redis.call('zrem', b, m) "                                   \
    "  s = tonumber(s) "                                                      \
    "  if s and s >= 0 then n = n + unfile(b, s, m, nil) end "                \
    "  return n end "                                                         \
    /* out holds each (score, member) once (out.seen): a twin would count */ \
    /* twice toward a page and leave it short, which ends a listing */        \
    "local function put(out, s, m, str, k) "                                  \
    "  local id = s .. ' ' .. m "                                             \
    "  if out.seen[id] then return end "                                      \
    "  out.seen[id] = true "                                                  \
    "  out[#out + 1] = { s, m, str, k } end "                                 \
    "local function collect(k, a, z, lim, out) "                              \
    "  local r = redis.call('zrangebyscore', k, a, z, 'WITHSCORES', 'LIMIT', 0, lim) " \
    "  for i = 1, #r, 2 do put(out, tonumber(r[i + 1]), r[i], r[i + 1], k) end end " \
    /* a sub-range's sub-set, then its list's entries of score in [a, z] */  \
    "local function collect_sub(b, lo, a, z, lim, out) "                      \
    "  collect(b .. ':s' .. lo, a, z, lim, out) "                             \
    "  local L, na, nz = lname(b, lo), bound(a), bound(z) "                   \
    "  for _, e in ipairs(redis.call('lrange', L, 0, -1)) do "                \
    "    local s, m = lparse(e) "                                             \
    "    if s and s >= na and s <= nz then "                                  \
    "      put(out, s, m, string.format('%d', s), L) end end end "            \
    /* Every sub-set whose low is <= z may hold scores in [a, z]: a writer  */ \
    /* with an older directory files a key under a lower low (I-L2, layout.h). */ \
    /* Sub-sets of lows <= a are read whole (clipped); those above a in     */ \
    /* order, until lim entries scoring below the next low are in hand.     */ \
    "local function range(b, a, z, lim) "                                     \
    "  local out = { seen = {} } "                                            \
    "  collect(b, a, z, lim, out) "                                           \
    "  local d = dir(b) "                                                     \
    "  for _, lo in ipairs(redis.call('zrangebyscore', d, '-inf', a)) do "    \
    "    collect_sub(b, lo, a, z, lim, out) end "                             \
    "  local off, done = 0, false "                                           \
    "  while not done do "                                                    \
    "    local more = redis.call('zrangebyscore', d, '(' .. a, z, 'WITHSCORES', 'LIMIT', off, 32) " \
    "    for i = 1, #more, 2 do "                                             \
    "      local below, nl = 0, tonumber(more[i + 1]) "                       \
    "      for j = 1, #out do if out[j][1] < nl then below = below + 1 end end " \
    "      if below >= lim then done = true break end "                       \
    "      collect_sub(b, more[i], a, z, lim, out) end "                      \
    "    if done or #more < 64 then break end "                               \
    "    off = off + 32 end "                                                 \
    "  table.sort(out, function(x, y) "                                       \
    "    if x[1] ~= y[1] then return x[1] < y[1] end return x[2] < y[2] end) " \
    "  local res = {} "                                                       \
    "  for i = 1, #out do "                                                   \
    "    if #res >= 2 * lim then break end "                                  \
    "    local p = out[i - 1] "                                               \
    "    if not (p and p[1] == out[i][1] and p[2] == out[i][2]) then "        \
    "      res[#res + 1] = out[i][2] res[#res + 1] = out[i][3] end end "      \
    /* done: sub-ranges left unread (a page of entries below them is in: */  \
    /* twins counted, res may hold fewer than lim) */                         \
    "  return res, out, done end "                                            \
    /* a stray (a key in a sub-set below the one covering its score) into */  \
    /* the sub-set that covers it: the sweeper's scan does this as it reads */ \
    /* (out of every sub-range below it: a split the add makes may have */  \
    /* moved an entry not refiled yet out of the set it was listed in) */     \
    "local function refile(b, out) "                                          \
    "  local d, n = dir(b), 0 "                                               \
    "  for _, e in ipairs(out) do "                                           \
    "    local lo = low_of(d, e[1]) "                                         \
    "    local kind = string.sub(e[4], #b + 1, #b + 2) "                      \
    "    if lo and (kind == ':s' or kind == ':l') and e[4] ~= b .. kind .. lo then " \
    "      unfile(b, e[1], e[2], lo) "                                        \
    "      add1(b, e[1], e[2]) n = n + 1 end end "                            \
    "  return n end "                                                         \
    /* a v-node's layout, lows and their sizes: {layout, low, size, ...}; */  \
    /* in layout 2 the directory always holds low 0 (a writer's first pick) */ \
    "local function dirinfo(b) "                                              \
    "  local d, out = dir(b), { LAY } "                                       \
    "  if LAY < 2 then return out end "                                       \
    "  redis.call('zadd', d, 'NX', 0, '0') "                                  \
    "  for _, lo in ipairs(redis.call('zrange', d, 0, -1)) do "               \
    "    out[#out + 1] = lo out[#out + 1] = subcard(b, lo) end "              \
    "  return out end "                                                       \
    /* layout 1 entries of the base with a hash for a score into layout 2 */  \
    "local function convert(b, a, lim) "                                      \
    "  local r = redis.call('zrangebyscore', b, a, TOP, 'WITHSCORES', 'LIMIT', 0, lim) " \
    "  local gone = {} "                                                      \
    "  for i = 1, #r, 2 do "                                                  \
    "    local s = tonumber(r[i + 1]) "                                       \
    "    if s and s >= 0 and s == math.floor(s) then "                        \
    "      add1(b, s, r[i]) gone[#gone + 1] = r[i] end end "                  \
    "  if #gone > 0 then redis.call('zrem', b, unpack(gone)) end "            \
    "  return #gone end "                                                     \
    /* a v-node's sub-sets, then its lists (with `lists`) */                 \
    "local function subsets(b, lists) "                                       \
    "  local out = {} "                                                       \
    "  local lows = redis.call('zrange', dir(b), 0, -1) "                     \
    "  for _, lo in ipairs(lows) do out[#out + 1] = b .. ':s' .. lo end "     \
    "  for _, lo in ipairs(lists and lows or {}) do out[#out + 1] = lname(b, lo) end " \
    "  return out end "                                                       \
    "local function count(k) "                                                \
    "  if string.match(k, ':l%d+$') then return redis.call('llen', k) end "   \
    "  return redis.call('zcard', k) end "

const char lay_lib[] = LAY_LIB;

const char lay_script[] =
    "local R, LIM, VMAX = KEYS[1], tonumber(ARGV[2]) or 128, tonumber(ARGV[3]) or 64 "
    LAY_LIB
    "local op = ARGV[1] "
    "if op == 'add' or op == 'rem' then "
    "  local f = op == 'add' and add1 or rem1 "
    "  local i, n = 4, 0 "
    "  while i <= #ARGV do "
    "    local b, c = ARGV[i], tonumber(ARGV[i + 1]) "
    "    i = i + 2 "
    "    for j = 1, c do n = n + f(b, ARGV[i], ARGV[i + 1]) i = i + 2 end end "
    "  return n "
    "elseif op == 'range' then "
    "  return range(ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])) "
    "elseif op == 'scan' then "
    "  local b, c, count = ARGV[4], tonumber(ARGV[5]) or 0, tonumber(ARGV[6]) "
    "  if LAY >= 2 and redis.call('exists', b) == 1 then convert(b, c, count) end "
    "  local a = c == 0 and '-inf' or c "
    "  local r, all, cut = range(b, a, '+inf', count) "
    "  if LAY >= 2 then "
    "    local lists = {} "
    "    for _, e in ipairs(all) do "
    "      if string.sub(e[4], #b + 1, #b + 2) == ':l' then lists[e[4]] = true end end "
    "    for L in pairs(lists) do "
    "      local ents, lsc, had = list_read(L) "
    "      split_list(L, ents, lsc, had, nil, nil) end "
    "    refile(b, all) end "
    "  if not cut and #r < 2 * count then return { '0', r } end "
    "  local last = tonumber(r[#r]) "
    "  local res = {} "
    "  for i = 1, #r, 2 do if tonumber(r[i + 1]) < last then "
    "    res[#res + 1] = r[i] res[#res + 1] = r[i + 1] end end "
    "  local g = range(b, last, last, 1000000) "
    "  for i = 1, #g do res[#res + 1] = g[i] end "
    "  return { last >= TOP and '0' or string.format('%d', math.floor(last) + 1), res } "
    "elseif op == 'score' then "
    "  local b, h, m = ARGV[4], tonumber(ARGV[5]), ARGV[6] "
    "  local s = redis.call('zscore', b, m) "
    "  if s then return s end "
    "  for _, lo in ipairs(redis.call('zrevrangebyscore', dir(b), h, '-inf')) do "
    "    s = redis.call('zscore', b .. ':s' .. lo, m) "
    "    if s then return s end "
    "    if redis.call('lpos', lname(b, lo), lent(h, m)) then return ARGV[5] end end "
    "  return false "
    "elseif op == 'card' then "
    "  local b = ARGV[4] "
    "  local n = redis.call('zcard', b) "
    "  local sets = redis.call('exists', b) "
    "  for _, k in ipairs(subsets(b, true)) do "
    "    local c = count(k) "
    "    if c > 0 then n = n + c sets = sets + 1 end end "
    "  return { n, sets } "
    "elseif op == 'sample' then "
    "  local b, want = ARGV[4], tonumber(ARGV[5]) "
    "  local ks = subsets(b, true) "
    "  ks[#ks + 1] = b "
    "  local cards, total = {}, 0 "
    "  for i, k in ipairs(ks) do cards[i] = count(k) total = total + cards[i] end "
    "  local out = {} "
    "  for i, k in ipairs(ks) do "
    "    local c = total > 0 and math.ceil(cards[i] * want / total) or 0 "
    "    if c > 0 and cards[i] > 0 and string.match(k, ':l%d+$') then "
    "      local at = math.random(0, math.max(cards[i] - c, 0)) "
    "      for _, e in ipairs(redis.call('lrange', k, at, at + c - 1)) do "
    "        local s, m = lparse(e) "
    "        if s then out[#out + 1] = m out[#out + 1] = string.format('%d', s) end end "
    "    elseif c > 0 and cards[i] > 0 then "
    "      local r = redis.call('zrandmember', k, c, 'WITHSCORES') "
    "      for j = 1, #r do out[#out + 1] = r[j] end end end "
    "  return out "
    "elseif op == 'sets' then "
    "  local b = ARGV[4] "
    "  local out = {} "
    "  for _, k in ipairs({ b, dir(b) }) do "
    "    if redis.call('exists', k) == 1 then out[#out + 1] = k end end "
    "  for _, k in ipairs(subsets(b, true)) do "
    "    if redis.call('exists', k) == 1 then out[#out + 1] = k end end "
    "  return out "
    "elseif op == 'clear' or op == 'empty' then "
    "  local n = 0 "
    "  for i = 4, #ARGV do "
    "    local b = ARGV[i] "
    "    local ks = subsets(b, true) "
    "    ks[#ks + 1] = b "
    "    if op == 'clear' then ks[#ks + 1] = dir(b) end "
    "    n = n + redis.call('unlink', unpack(ks)) end "
    "  return n "
    "elseif op == 'convert' then "
    "  if LAY < 2 then return 0 end "
    "  return convert(ARGV[4], 0, tonumber(ARGV[5])) "
    "elseif op == 'dir' then "
    "  return dirinfo(ARGV[4]) "
    "elseif op == 'split' then "
    "  local b, lo = ARGV[4], ARGV[5] "
    "  local d, k = dir(b), ARGV[4] .. ':s' .. ARGV[5] "
    "  if LAY < 2 or not redis.call('zscore', d, lo) then return dirinfo(b) end "
    "  local n, zn, at = subcard(b, lo), redis.call('zcard', k), nil "
    "  if n >= math.floor(LIM / 2) then at = split(b, d, lo, k) end "
    "  if zn > LIM and not at then recreate(k) end "
    "  local out = { LAY, lo, subcard(b, lo) } "
    "  if at then out[4] = at out[5] = subcard(b, at) end "
    "  return out "
    "elseif op == 'layout' then "
    "  if ARGV[4] and redis.call('exists', R) == 1 then "
    "    redis.call('hset', R, 'layout', ARGV[4]) "
    "    return tonumber(ARGV[4]) end "
    "  return LAY "
    "end "
    "return redis.error_reply('ERR ringproxy index script: unknown operation')";

void lay_limits_default(struct lay_limits *l)
{
    l->entries = LAY_ENTRIES_DEFAULT;
    l->value = LAY_VALUE_DEFAULT;
    l->from_redis = false;
}

static bool parse_limit(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    long long v;

    if (s == NULL || *s < '0' || *s > '9') {
        return false;
    }
    v = strtoll(s, &end, 10);
    if (*end != '\0') {
        return false;
    }
    *out = v < (long long)lo ? lo : v > (long long)hi ? hi : (uint32_t)v;
    return true;
}

bool lay_limits_parse(struct lay_limits *l, const struct redisReply *r)
{
    uint32_t entries = 0, value = 0;
    bool have_e = false, have_v = false;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        return false;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            continue;
        }
        /* Redis 7 names them listpack; older ones ziplist (7 answers both) */
        if (strcmp(k->str, "zset-max-listpack-entries") == 0 ||
            (!have_e && strcmp(k->str, "zset-max-ziplist-entries") == 0)) {
            have_e = parse_limit(v->str, LAY_ENTRIES_MIN, LAY_ENTRIES_MAX, &entries);
        } else if (strcmp(k->str, "zset-max-listpack-value") == 0 ||
                   (!have_v && strcmp(k->str, "zset-max-ziplist-value") == 0)) {
            have_v = parse_limit(v->str, 0, LAY_VALUE_MAX, &value);
        }
    }
    if (!have_e || !have_v) {
        return false;
    }
    l->entries = entries;
    l->value = value;
    l->from_redis = true;
    return true;
}

/* --- SHA-1 (FIPS 180-1), for EVALSHA ------------------------------------------ */

static uint32_t rol(uint32_t v, int n)
{
    return v << n | v >> (32 - n);
}

static void sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];

    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (int i = 16; i < 80; i++) {
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void lay_sha1_hex(const void *data, size_t len, char out[LAY_SHA_SIZE])
{
    uint32_t h[5] = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 };
    const unsigned char *p = data;
    unsigned char tail[128];
    size_t full = len & ~(size_t)63, rest = len - full;
    uint64_t bits = (uint64_t)len * 8;

    for (size_t off = 0; off < full; off += 64) {
        sha1_block(h, p + off);
    }
    memset(tail, 0, sizeof(tail));
    memcpy(tail, p + full, rest);
    tail[rest] = 0x80;
    size_t tlen = rest + 1 + 8 <= 64 ? 64 : 128;
    for (int i = 0; i < 8; i++) {
        tail[tlen - 1 - i] = (unsigned char)(bits >> (8 * i));
    }
    for (size_t off = 0; off < tlen; off += 64) {
        sha1_block(h, tail + off);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(out + 8 * i, 9, "%08x", h[i]);
    }
}

const char *lay_sha(void)
{
    static char sha[LAY_SHA_SIZE];

    if (sha[0] == '\0') {
        lay_sha1_hex(lay_script, sizeof(lay_script) - 1, sha);
    }
    return sha;
}

int lay_head(const char **argv, size_t *lens, const char *ring, const char *op,
             const struct lay_limits *l, char nums[2][12])
{
    snprintf(nums[0], 12, "%u", l->entries);
    snprintf(nums[1], 12, "%u", l->value);
    argv[0] = "EVALSHA";
    argv[1] = lay_sha();
    argv[2] = "1";
    argv[3] = ring;
    argv[4] = op;
    argv[5] = nums[0];
    argv[6] = nums[1];
    for (int i = 0; lens != NULL && i < LAY_HEAD; i++) {
        lens[i] = strlen(argv[i]);
    }
    return LAY_HEAD;
}

void lay_load_argv(const char **argv, size_t *lens)
{
    argv[0] = "SCRIPT";
    argv[1] = "LOAD";
    argv[2] = lay_script;
    lens[0] = 6;
    lens[1] = 4;
    lens[2] = sizeof(lay_script) - 1;
}

int lay_load_sync(struct redisContext *c, char *err, size_t errlen)
{
    const char *argv[3];
    size_t lens[3];

    lay_load_argv(argv, lens);
    redisReply *r = redisCommandArgv(c, 3, argv, lens);
    int rc = r != NULL && r->type == REDIS_REPLY_STRING && strcmp(r->str, lay_sha()) == 0 ?
             0 : -1;
    if (rc != 0) {
        snprintf(err, errlen, "SCRIPT LOAD of the index script: %s",
                 r == NULL ? c->errstr : r->type == REDIS_REPLY_ERROR ? r->str :
                 "unexpected reply");
    }
    freeReplyObject(r);
    return rc;
}

bool lay_noscript(const char *msg)
{
    return msg != NULL && strncmp(msg, "NOSCRIPT", 8) == 0;
}

/* --- the rules, in C --------------------------------------------------------------- */

int lay_pick(const uint32_t *lows, size_t n, uint32_t score)
{
    size_t lo = 0, hi = n;      /* the first low > score is in [lo, hi] */

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lows[mid] <= score) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return (int)lo - 1;
}

bool lay_split_at(const uint32_t *scores, size_t n, uint32_t low, uint32_t *at)
{
    if (n == 0) {
        return false;
    }
    uint32_t m = scores[n / 2];
    if (m <= low) {
        size_t i = n / 2;
        while (i < n && scores[i] <= low) {
            i++;
        }
        if (i == n) {
            return false;
        }
        m = scores[i];
    }
    *at = m;
    return true;
}

bool lay_is_list(const char *base, const char *name, size_t len)
{
    size_t blen = strlen(base), i = blen + 2;

    if (len <= i || strncmp(name, base, blen) != 0 || name[blen] != ':' ||
        name[blen + 1] != 'l') {
        return false;
    }
    while (i < len && name[i] >= '0' && name[i] <= '9') {
        i++;
    }
    return i == len;
}

int lay_version(const char *field)
{
    return field != NULL && atoi(field) >= 2 ? 2 : 1;
}
