"""Lua scripts of RedisStreamBus. Each runs atomically; each validates before its first write,
so an error leaves nothing half-done."""

from __future__ import annotations

__all__ = [
    "CLAIM_KEY",
    "CLAIM_KEYS",
    "CLAIM_NONCES",
    "COMMIT",
    "DEAD_LETTER",
    "PUBLISH_MANY",
    "RELEASE_KEY",
    "RENEW_KEY",
]

# Shared by COMMIT and PUBLISH_MANY. An append is the arguments
#   stream_key_index, maxlen ("" = none), n_fields, name1, value1, ..., nameN, valueN
# scan_append(p) checks the one starting at ARGV[p] and returns the position after it (or nil and
# an error); xadd(p) writes it and returns the new id, or nil and the error when the server
# refuses it (a stream whose last id is the largest possible: no check beforehand can see that
# cheaply); undo(err) then deletes every entry the script added and returns the error. So a
# script that scans everything first, and writes nothing it cannot undo before its appends, is
# all or nothing.
_PARSE = """
local checked = {}
local function check(k)
  if not k then return 'ERR bad key index' end
  if not checked[k] then
    local t = redis.call('TYPE', k)['ok']
    if t ~= 'stream' and t ~= 'none' then
      return 'WRONGTYPE ' .. k .. ' holds a ' .. t .. ', not a stream'
    end
    checked[k] = true
  end
  return nil
end
local function scan_append(p)
  local err = check(KEYS[tonumber(ARGV[p])])
  if err then return nil, err end
  local nf = tonumber(ARGV[p + 2])
  if not nf or nf < 1 or p + 2 + 2 * nf > #ARGV then return nil, 'ERR malformed append' end
  return p + 3 + 2 * nf
end
local added = {}
local function undo(reply)
  for i = #added, 1, -1 do
    redis.call('XDEL', added[i][1], added[i][2])
  end
  return redis.error_reply(reply.err)
end
local function append(args)
  local id = redis.pcall(unpack(args))
  if type(id) == 'table' and id.err then return nil, id end
  added[#added + 1] = {args[2], id}
  return id
end
local function xadd(p)
  local args = {'XADD', KEYS[tonumber(ARGV[p])]}
  if ARGV[p + 1] ~= '' then
    args[3] = 'MAXLEN'
    args[4] = '~'
    args[5] = ARGV[p + 1]
  end
  args[#args + 1] = '*'
  local n = #args
  for f = p + 3, p + 2 + 2 * tonumber(ARGV[p + 2]) do
    n = n + 1
    args[n] = ARGV[f]
  end
  return append(args)
end
"""

# KEYS: every stream the appends go to. ARGV: runs of appends, one after the other; a run is
#   stream_key_index, maxlen ("" = none), n_fields, name1, ..., nameN, count, then count x N values
# (its appends share the stream, the cap and the field names, in order: a batch of frames to one
# stream is one run, and each append costs its values only). Every run is checked and every key
# type-checked before the first write; returns the new entry ids in order.
PUBLISH_MANY = (
    _PARSE
    + """
local runs = {}
local p = 1
while p <= #ARGV do
  local err = check(KEYS[tonumber(ARGV[p])])
  if err then return redis.error_reply(err) end
  local nf = tonumber(ARGV[p + 2])
  local count = nf and tonumber(ARGV[p + 3 + nf])
  if not count or nf < 1 or count < 1 or p + 3 + nf + count * nf > #ARGV then
    return redis.error_reply('ERR malformed append')
  end
  runs[#runs + 1] = p
  p = p + 4 + nf + count * nf
end
local out = {}
local n = 0
for _, r in ipairs(runs) do
  local key, cap, nf = KEYS[tonumber(ARGV[r])], ARGV[r + 1], tonumber(ARGV[r + 2])
  local v = r + 4 + nf
  local stop = v + tonumber(ARGV[r + 3 + nf]) * nf - 1
  if nf == 1 and cap == '' then
    local name = ARGV[r + 3]
    for i = v, stop do
      local id, err = append({'XADD', key, '*', name, ARGV[i]})
      if not id then return undo(err) end
      n = n + 1
      out[n] = id
    end
  else
    local args = {'XADD', key}
    if cap ~= '' then
      args[3] = 'MAXLEN'
      args[4] = '~'
      args[5] = cap
    end
    args[#args + 1] = '*'
    local base = #args
    for i = v, stop, nf do
      for f = 0, nf - 1 do
        args[base + 2 * f + 1] = ARGV[r + 3 + f]
        args[base + 2 * f + 2] = ARGV[i + f]
      end
      local id, err = append(args)
      if not id then return undo(err) end
      n = n + 1
      out[n] = id
    end
  end
end
return out
"""
)

# KEYS: every stream and processed-marker key the commit touches, and the fence key (one hash tag).
# ARGV: ttl_ms, fence_key_index (0 = none), fence_token, fence_ttl_ms, n_groups, group1..groupN,
# then the items in runs: input_key_index, group_index, dedupe_key_index (0 = none), n_appends,
# count, count entry ids, then the appends (see _PARSE); count is 1 for an item with a dedupe
# key or appends, and items with neither (acks only) of one stream and group are one run of
# count ids. Every item is scanned and every key type-checked before the first write. Each
# item's entry is acked first: an entry no longer pending in its group was already committed (or
# dead-lettered) by some consumer, so the item is a duplicate; so is one whose dedupe key is
# already marked. Returns a string with one character per item: "1" = effects written and acked,
# "0" = duplicate (nothing written). With a fence, nothing is written unless the fence key holds
# the token (error "FENCED ..."), and the fence key is renewed for fence_ttl_ms.
COMMIT = (
    _PARSE
    + """
local ttl = ARGV[1]
local fence = tonumber(ARGV[2])
local ng = tonumber(ARGV[5])
local runs = {}
local plain = false  -- the commit has ack-only items
local p = 6 + ng
while p <= #ARGV do
  local k = KEYS[tonumber(ARGV[p])]
  local group = ARGV[5 + tonumber(ARGV[p + 1])]
  local di = tonumber(ARGV[p + 2])
  local na = tonumber(ARGV[p + 3])
  local count = tonumber(ARGV[p + 4])
  local err = check(k)
  if err then return redis.error_reply(err) end
  if not group or not di or not na or not count or count < 1 or (di > 0 and not KEYS[di])
      or ((di > 0 or na > 0) and count ~= 1) or p + 4 + count > #ARGV then
    return redis.error_reply('ERR commit: malformed item run ' .. (#runs + 1))
  end
  runs[#runs + 1] = p
  if di == 0 and na == 0 then plain = true end
  p = p + 5 + count
  for _ = 1, na do
    local q
    q, err = scan_append(p)
    if not q then return redis.error_reply(err) end
    p = q
  end
end
if fence > 0 then
  if redis.call('GET', KEYS[fence]) ~= ARGV[3] then
    return redis.error_reply('FENCED ' .. KEYS[fence] .. ' is not held by this owner')
  end
  redis.call('PEXPIRE', KEYS[fence], ARGV[4])
end
local fresh = {}
local seen = {}
local claimed = {}  -- entries of marker-only items
local acked_here = {}  -- of those, the ones an ack-only item of this commit acked
-- the appends first (undone whole if the server refuses one), then the acks and markers. An item
-- with effects (count 1) is fresh while its entry is pending in the group and its marker unset,
-- and only once per entry and per marker within the commit. An item with a marker and no appends
-- is only claimed here (first of its entry and marker): its ack below says whether it was pending,
-- and setting its marker (NX) whether the marker was unset
for _, r in ipairs(runs) do
  local k, group = KEYS[tonumber(ARGV[r])], ARGV[5 + tonumber(ARGV[r + 1])]
  local di, na = tonumber(ARGV[r + 2]), tonumber(ARGV[r + 3])
  if na > 0 or di > 0 then
    local id = ARGV[r + 5]
    local entry = k .. '\0' .. group .. '\0' .. id
    local marker = di > 0 and KEYS[di] or nil
    local ok = not seen[entry] and not (marker and seen[marker])
    if ok and na == 0 and plain then
      claimed[entry] = true  -- an earlier ack-only item of this commit may ack it first, below
    end
    if ok and na > 0 then
      local pending = redis.pcall('XPENDING', k, group, id, id, 1)  -- (no group: none pending)
      ok = type(pending) == 'table' and not pending.err and #pending > 0
        and (not marker or redis.call('EXISTS', marker) == 0)
    end
    seen[entry] = true
    if marker then seen[marker] = true end
    fresh[r] = ok
    if ok and na > 0 then
      local q = r + 6
      for _ = 1, na do
        local added_id, err = xadd(q)
        if not added_id then return undo(err) end
        q = q + 3 + 2 * tonumber(ARGV[q + 2])
      end
    end
  end
end
local out = {}
local n = 0
for _, r in ipairs(runs) do
  local k, group = KEYS[tonumber(ARGV[r])], ARGV[5 + tonumber(ARGV[r + 1])]
  local di, na = tonumber(ARGV[r + 2]), tonumber(ARGV[r + 3])
  local last = r + 4 + tonumber(ARGV[r + 4])
  for i = r + 5, last do
    local acked = redis.call('XACK', k, group, ARGV[i]) == 1
    n = n + 1
    if na > 0 then
      out[n] = fresh[r] and '1' or '0'
      if fresh[r] and di > 0 then
        redis.call('SET', KEYS[di], '1', 'PX', ttl)
      end
    elseif di > 0 then  -- fresh: claimed, pending when the commit began, its marker set now
      local ok = fresh[r] and (acked or acked_here[k .. '\0' .. group .. '\0' .. ARGV[i]])
        and redis.call('SET', KEYS[di], '1', 'NX', 'PX', ttl)
      out[n] = ok and '1' or '0'
    else
      out[n] = acked and '1' or '0'
      if acked and plain and next(claimed) ~= nil then
        local entry = k .. '\0' .. group .. '\0' .. ARGV[i]
        if claimed[entry] then acked_here[entry] = true end
      end
    end
  end
end
return table.concat(out)
"""
)

# KEYS: dead_stream, source_stream. ARGV: group, entry_id, maxlen, name1, value1, ...
# The caller bounds the fields (bus.api.dead_copy), so the one unpack below stays far below Lua's
# limit on the number of results ("too many results to unpack") whatever the original entry held.
DEAD_LETTER = """
for _, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. k .. ' holds a ' .. t .. ', not a stream')
  end
end
if #ARGV > 3 + 2 * 80 then return redis.error_reply('ERR dead letter: too many fields') end
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return id
"""

# KEYS: key. ARGV: value, ttl_ms. Returns nil if set now, else the existing value.
CLAIM_KEY = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""

# KEYS: the keys; ARGV: ttl_ms, value1..valueN. Returns per key: false if set now, else the existing value.
CLAIM_KEYS = """
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[1]) then
    out[i] = false
  else
    out[i] = redis.call('GET', KEYS[i])
  end
end
return out
"""

# KEYS: since_key, key1..keyN; ARGV: value1, deadline1, .., valueN, deadlineN (deadlines in Unix
# ms). Reads since_key first: the time (ms) from which this server's memory of the keys is complete.
# When it is missing, not a decimal integer or later than the server's clock (a fresh server,
# one restarted without persistence, or a writer's value) it is set to the
# server's start (TIME - uptime, less a second: uptime counts whole seconds), or 0 where INFO is
# unavailable. Then per key, by the server's clock: a deadline already passed sets nothing (0);
# else SET NX PXAT deadline (false if set now, else the existing value). A key of another type
# (a writer's) is replaced, as a missing one would be set.
# Returns {since_ms, then per key: 0, false or the existing value}.
CLAIM_NONCES = """
local function held(k)
  local ok, value = pcall(redis.call, 'GET', k)
  if ok then return value end
  redis.call('DEL', k)
  return false
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = held(KEYS[1])
-- a writer's text, or a time after the server's now (memory cannot begin in the future): unusable
if since and (not string.match(since, '^%d+$') or tonumber(since) > now) then since = false end
if not since then
  local ok, info = pcall(redis.call, 'INFO', 'server')
  local up = ok and tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  if up then
    since = string.format('%d', now - (up + 1) * 1000)
  else
    since = '0'
  end
  redis.call('SET', KEYS[1], since)
end
local out = {since}
for i = 2, #KEYS do
  local deadline = ARGV[2 * i - 2]
  if tonumber(deadline) <= now then
    out[i] = 0
  elseif redis.call('SET', KEYS[i], ARGV[2 * i - 3], 'NX', 'PXAT', deadline) then
    out[i] = false
  else
    out[i] = held(KEYS[i])
    if not out[i] then
      redis.call('SET', KEYS[i], ARGV[2 * i - 3], 'PXAT', deadline)
      out[i] = false
    end
  end
end
return out
"""

# KEYS: key. ARGV: value, ttl_ms. Renews the key's TTL if it holds value; returns 1, else 0.
RENEW_KEY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: key. ARGV: value. Deletes the key if it holds value; returns 1, else 0.
RELEASE_KEY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
